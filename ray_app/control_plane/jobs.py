"""Runs on Ray Jobs: submission, state and stop through Ray's `JobSubmissionClient`.

A job is `ray-app run <resolved config>` with a unique submission id and the run name,
template and family in the job's metadata, so the jobs of a cluster can be matched to
their runs again from Ray's own records. The client is created off the request path
(a local head takes seconds to start), and submission retries while the head's job
agent has not registered yet: the job server answers before its agent does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ray_app.control_plane.local_ray import LocalRayHead

logger = logging.getLogger(__name__)

# Ray's job states, as the service shows them.
JOB_STATES = {
    "PENDING": "pending", "RUNNING": "running", "STOPPED": "stopped", "SUCCEEDED": "succeeded", "FAILED": "failed",
}
ACTIVE_STATES = frozenset({"pending", "running"})
NO_AGENT = "No available agent"


class JobServerUnavailable(RuntimeError):
    """The Ray job server cannot be reached (not started yet, or gone)."""


@dataclass
class JobState:
    state: str  # one of JOB_STATES' values
    message: str
    start_time: float | None = None
    end_time: float | None = None


class JobLauncher:
    """One Ray job server: a cluster's (`address`) or a local head started here."""

    def __init__(self, address: str | None, local_cpus: int | None = None, head_log: Any = None,
                 enabled: bool = True) -> None:
        self.address = address if enabled else None
        self.local_head = LocalRayHead(local_cpus, head_log) if enabled and not address else None
        self._client: Any = None
        self._ready = threading.Event()
        self.error: str | None = None
        if not enabled:
            # Nothing to start or connect to: every job request fails at once, with why.
            self.error = "this server runs without Ray jobs (started with ray_jobs off / --no-ray)"
            self._ready.set()

    def start(self) -> None:
        """Start the local head if there is one, then connect: run in a thread."""
        try:
            if self.local_head is not None:
                # The head enforces Ray's token auth; the jobs client sends the token (from
                # ~/.ray/auth_token) only with RAY_AUTH_MODE=token, which Ray reads when it
                # is first imported: `ray-app server` sets it before that, an embedding
                # application must too.
                self.address = self.local_head.start()
            from ray.job_submission import JobSubmissionClient

            deadline = time.monotonic() + 120
            while True:
                try:
                    self._client = JobSubmissionClient(self.address)
                    break
                except Exception as exc:  # noqa: BLE001 - the server may still be coming up
                    if time.monotonic() > deadline:
                        raise JobServerUnavailable(f"cannot reach the Ray job server at {self.address}: {exc}") from exc
                    time.sleep(1)
        except Exception as exc:  # noqa: BLE001 - reported by every later request
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("Ray job server unavailable: %s", self.error)
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self.local_head is not None:
            self.local_head.stop()

    def client(self, timeout_s: float = 180.0) -> Any:
        if not self._ready.wait(timeout_s):
            raise JobServerUnavailable(f"the Ray job server at {self.address or 'a local head'} is still starting")
        if self._client is None:
            raise JobServerUnavailable(self.error or "the Ray job server is not available")
        return self._client

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._client is not None

    def submit(self, entrypoint: str, submission_id: str, metadata: dict[str, str],
               env_vars: dict[str, str], timeout_s: float = 120.0) -> str:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return str(client.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, metadata=metadata,
                    runtime_env={"env_vars": env_vars},
                ))
            except RuntimeError as exc:
                if NO_AGENT not in str(exc) or time.monotonic() > deadline:
                    raise JobServerUnavailable(f"Ray refused the job: {exc}") from exc
                time.sleep(2)

    def state(self, submission_id: str) -> JobState:
        info = self.client().get_job_info(submission_id)
        status = getattr(info.status, "value", str(info.status))
        return JobState(
            state=JOB_STATES.get(str(status), str(status).lower()),
            message=info.message or "",
            start_time=(info.start_time or 0) / 1000 or None,
            end_time=(info.end_time or 0) / 1000 or None,
        )

    def stop_job(self, submission_id: str) -> bool:
        return bool(self.client().stop_job(submission_id))

    def list_jobs(self) -> list[Any]:
        return list(self.client().list_jobs())
