"""Runs on Ray Jobs: submission, state and stop through Ray's `JobSubmissionClient`.

A job is `ray-app run <resolved config>` with a unique submission id and the run name,
template and family in the job's metadata, so the jobs of a cluster can be matched to
their runs again from Ray's own records. The client is created off the request path
(a local head takes seconds to start), every call has a deadline, and submission
retries while the head's job agent has not registered yet: the job server answers
before its agent does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
    """The Ray job server cannot be reached (not started yet, gone, or refusing us)."""


# Between two attempts to reach a job server that did not answer: it may come up later.
RETRY_S = 5.0


def call_with_timeout(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`call()` with a deadline. Ray's job client sends its requests without a timeout,
    so a head that accepts connections and never answers would hold a request (and the
    server's shutdown) forever: the call runs in a daemon thread that is abandoned when
    it has not answered in time."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"ray-call-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise JobServerUnavailable(f"{what}: no answer from the Ray job server in {timeout_s:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def auth_refused(address: str | None, exc: Exception) -> str:
    """What to do when the head wants Ray's token and this process does not send a valid one."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"the Ray head at {address} refused this server ({first_line}): it uses token authentication. "
            "Start the server with RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or the file "
            "~/.ray/auth_token) in its environment, as `ray job submit` needs")


@dataclass
class JobState:
    state: str  # one of JOB_STATES' values
    message: str
    start_time: float | None = None
    end_time: float | None = None


class JobLauncher:
    """One Ray job server: a cluster's (`address`) or a local head started here.

    Every call to it has a deadline (`timeout_s`); one that cannot be answered raises
    JobServerUnavailable saying why, so a request fails in seconds, never hangs. A job
    server that cannot be reached is tried again every RETRY_S; one that refuses our
    token is not (that needs the server restarted with one), and `error` says so."""

    def __init__(self, address: str | None, local_cpus: int | None = None, head_log: Any = None,
                 enabled: bool = True, timeout_s: float = 10.0) -> None:
        self.address = address if enabled else None
        self.local_head = LocalRayHead(local_cpus, head_log) if enabled and not address else None
        self.timeout_s = timeout_s
        self._client: Any = None
        self._attempted = threading.Event()  # the first attempt to connect has ended, either way
        self._stopping = threading.Event()
        self.error: str | None = None
        if not enabled:
            # Nothing to start or connect to: every job request fails at once, with why.
            self.error = "this server runs without Ray jobs (started with ray_jobs off / --no-ray)"
            self._attempted.set()

    def start(self) -> None:
        """Start the local head if there is one, then connect: run in a thread."""
        try:
            if self.local_head is not None:
                self.error = "the local Ray head is starting"
                # The head enforces Ray's token auth; the jobs client sends the token (from
                # ~/.ray/auth_token) only with RAY_AUTH_MODE=token, which Ray reads when it
                # is first imported: `ray-app server` sets it before that, an embedding
                # application must too.
                self.address = self.local_head.start()
        except Exception as exc:  # noqa: BLE001 - reported by every later request
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("Ray job server unavailable: %s", self.error)
            self._attempted.set()
            return
        self._connect()

    def _connect(self) -> None:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        while not self._stopping.is_set():
            try:
                self._client = call_with_timeout(lambda: JobSubmissionClient(self.address), self.timeout_s,
                                                 f"connecting to {self.address}")
                self.error = None
                return
            except AuthenticationError as exc:
                self.error = auth_refused(self.address, exc)
                logger.error("%s", self.error)
                return
            except Exception as exc:  # noqa: BLE001 - the head may come up later: tried again
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.error = f"cannot reach the Ray job server at {self.address} ({reason}); trying again every {RETRY_S:g}s"
                logger.warning("%s", self.error)
            finally:
                self._attempted.set()
            self._stopping.wait(RETRY_S)

    def stop(self) -> None:
        self._stopping.set()
        if self.local_head is not None:
            self.local_head.stop()

    def client(self) -> Any:
        """The connected client, or JobServerUnavailable within `timeout_s` saying why."""
        if self._client is None and not self._attempted.wait(self.timeout_s):
            raise JobServerUnavailable(f"{self.error or 'the Ray job server is starting'}; try again in a few seconds")
        if self._client is None:
            raise JobServerUnavailable(self.error or "the Ray job server is not available")
        return self._client

    @property
    def ready(self) -> bool:
        return self._client is not None

    def _call(self, call: Callable[[], Any], what: str) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return call_with_timeout(call, self.timeout_s, what)
        except AuthenticationError as exc:
            raise JobServerUnavailable(auth_refused(self.address, exc)) from None
        except JobServerUnavailable as exc:
            raise JobServerUnavailable(f"{exc} (at {self.address})") from None

    def submit(self, entrypoint: str, submission_id: str, metadata: dict[str, str],
               env_vars: dict[str, str], agent_wait_s: float = 120.0) -> str:
        """Submit the job; while the head's job agent has not registered yet (a head that
        just started), try again until `agent_wait_s`."""
        client = self.client()
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                return str(self._call(lambda: client.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, metadata=metadata,
                    runtime_env={"env_vars": env_vars},
                ), f"submitting job {submission_id}"))
            except JobServerUnavailable:
                raise
            except RuntimeError as exc:
                if NO_AGENT not in str(exc) or time.monotonic() > deadline:
                    raise JobServerUnavailable(f"Ray refused the job: {exc}") from exc
                time.sleep(2)

    def state(self, submission_id: str) -> JobState:
        client = self.client()
        info = self._call(lambda: client.get_job_info(submission_id), f"reading job {submission_id}")
        status = getattr(info.status, "value", str(info.status))
        return JobState(
            state=JOB_STATES.get(str(status), str(status).lower()),
            message=info.message or "",
            start_time=(info.start_time or 0) / 1000 or None,
            end_time=(info.end_time or 0) / 1000 or None,
        )

    def stop_job(self, submission_id: str) -> bool:
        client = self.client()
        return bool(self._call(lambda: client.stop_job(submission_id), f"stopping job {submission_id}"))

    def list_jobs(self) -> list[Any]:
        client = self.client()
        return list(self._call(client.list_jobs, "listing jobs"))
