"""`ray job submit` against a real Ray head: the cluster path users take.

The head is the session's `ray_head` (`ray start --head` on loopback in its own process
group, so stopping it cannot touch the test session's Ray): submits `ray-app run` on the
smoke config, waits for the job to succeed and checks the run it made.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.helpers.configs import REPO


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
    # the job's whole output stays with the run, after the cluster that ran it is gone
    assert "==== end: exit 0" in (run / "logs" / "run.log").read_text()
