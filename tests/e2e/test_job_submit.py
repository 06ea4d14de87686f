"""`ray job submit` against a real Ray head: the cluster path users take.

Starts `ray start --head` on loopback in its own process group (so stopping it cannot
touch the test session's Ray), submits `ray-app run` on the smoke config, waits for the
job to succeed, checks the run it made, and kills exactly that head's process group.
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

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_dashboard(url: str, head: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without Ray's auth token): the server is up
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the Ray head's job server at {url} did not come up in {timeout_s}s")


CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


@pytest.fixture
def ray_head(tmp_path: Path):
    dashboard, gcs = free_port(), free_port()
    previous = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.is_file() else None
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = (tmp_path / "head.log").open("wb")
    head = subprocess.Popen(
        [
            "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}", "--num-cpus=3",
            # Fixed defaults (the dashboard agent's 52365, ...) are taken by the test
            # session's own Ray: without ports of its own the head's job agent never starts.
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(url, head)
        yield url
    finally:
        # The head, raylet, GCS, dashboard and workers share the head's process group.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=15)
            except subprocess.TimeoutExpired:
                continue
        log.close()
        # `ray start` records itself as this machine's current cluster; a dead record
        # would send a later bare ray.init() looking for it.
        if CURRENT_CLUSTER.is_file() and CURRENT_CLUSTER.read_text().strip().endswith(f":{gcs}"):
            if previous is None:
                CURRENT_CLUSTER.unlink()
            else:
                CURRENT_CLUSTER.write_text(previous)


def submit(address: str, entrypoint: list[str], attempts: int = 12) -> subprocess.CompletedProcess[str]:
    """`ray job submit`, retried while the head's job agent has not registered yet: the
    dashboard answers before the agent does, and Ray's answer then is to try again."""
    # The head enforces Ray's token auth (the token is in ~/.ray/auth_token); the jobs
    # client only sends it when told to.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    for _ in range(attempts):
        result = subprocess.run(
            ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--", *entrypoint],
            capture_output=True, text=True, timeout=900, env=env,
        )
        if result.returncode == 0 or "No available agent to submit job" not in result.stderr + result.stdout:
            return result
        time.sleep(5)
    return result


def test_ray_job_submit_runs_the_pipeline(ray_head: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    result = submit(ray_head, [
        "ray-app", "run", "configs/smoke.yaml", "-o", f"storage.root={root}",
        "-o", "training.epochs=2", "-o", "calibration.policy=threshold",
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    assert "[6/6] export    done in" in output  # the job's own progress lines stream back
    run = root / "smoke_vit_baseline_s0"
    assert (run / "bundle" / "bundle.json").is_file() and (run / "eval" / "metrics.json").is_file()
