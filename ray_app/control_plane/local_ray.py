"""A Ray head of the server's own, with a job server, for a laptop or a single machine.

Started as `ray start --head --block` in its own process group, on loopback, every port
picked free: a machine that already runs a Ray (another user's, a test session's) would
otherwise hold the fixed default ports of the dashboard agent, and the job server would
never get an agent. Stopping it kills exactly that process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from ray_app.errors import UserError

# `ray start` records itself as the machine's current cluster; a stale record would send
# a later bare ray.init() looking for a head that is gone.
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalRayHead:
    """`ray start --head` on loopback; `address` is its job server (dashboard) URL."""

    def __init__(self, num_cpus: int | None = None, log_file: Path | None = None) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.log_file = log_file
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._previous_cluster: str | None = None

    def start(self, timeout_s: float = 180.0) -> str:
        self._previous_cluster = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.is_file() else None
        command = [
            "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--num-cpus={self.num_cpus}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        output = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except FileNotFoundError:
            raise UserError("the `ray` command is not on PATH: install ray-app into this environment") from None
        self._wait_for_dashboard(timeout_s)
        return self.address

    def _wait_for_dashboard(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise UserError(f"the local Ray head exited with code {self.process.returncode}"
                                + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without Ray's token): the server is up
            except OSError:
                time.sleep(0.5)
        raise UserError(f"the local Ray head's job server at {self.address} did not come up in {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None
        if CURRENT_CLUSTER.is_file() and CURRENT_CLUSTER.read_text().strip().endswith(f":{self.gcs_port}"):
            if self._previous_cluster is None:
                CURRENT_CLUSTER.unlink()
            else:
                CURRENT_CLUSTER.write_text(self._previous_cluster)
