"""The control plane on a real Ray head: runs launched as Ray jobs through the API, their
metrics streamed live (history, then new epochs, no gap, no duplicate), their logs, a
run stopped, statuses that combine the job and the run's own record."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ray_app.server.app import create_app
from tests.conftest import SMOKE, running_server, sse_events

EPOCHS = 3


@pytest.fixture(scope="module")
def plane(ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    runs = tmp_path_factory.mktemp("control-plane") / "runs"
    with running_server(create_app(runs_root=runs, ray_address=ray_head, job_poll_s=0.5, index_refresh_s=1.0)) as url:
        yield f"{url}/api/v1", runs


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def trained(plane: Any) -> dict[str, Any]:
    """The smoke config launched through the API. A stream opened at once sees every
    epoch live; a second, opened once an epoch exists, gets history first, then live."""
    api, runs = plane
    smoke = yaml.safe_load(SMOKE.read_text())
    launched = requests.post(f"{api}/runs", json={"config": smoke, "overrides": [f"training.epochs={EPOCHS}"]}, timeout=300)
    assert launched.status_code == 201, launched.text
    body = launched.json()
    run = body["run"]
    live: list[dict[str, str]] = []
    watcher = threading.Thread(target=lambda: live.extend(sse_events(requests.Session(), f"{api}/runs/{run}/metrics/stream")))
    watcher.start()
    duplicate = requests.post(f"{api}/runs", json={"config": smoke, "overrides": [f"training.epochs={EPOCHS}"]}, timeout=60)
    wait_for(lambda: requests.get(f"{api}/runs/{run}/metrics", timeout=10).json()["rows"], 600, "the first epoch")
    late = sse_events(requests.Session(), f"{api}/runs/{run}/metrics/stream")
    watcher.join(timeout=600)
    return {"launched": body, "run": run, "live": live, "late": late, "duplicate": duplicate, "runs": runs}


def test_a_launched_run_succeeds_and_records_its_job(plane: Any, trained: dict[str, Any]) -> None:
    api, runs = plane
    assert trained["launched"]["status"] == "pending" and trained["launched"]["family"] == "vit"
    assert trained["duplicate"].status_code == 409
    assert "already running" in trained["duplicate"].json()["detail"]
    detail = wait_for(lambda: (d := requests.get(f"{api}/runs/{trained['run']}", timeout=10).json())["status"] not in
                      ("pending", "running") and d, 60, "the run's final status")
    assert detail["status"] == "succeeded", detail
    assert detail["job"]["state"] == "succeeded" and detail["job"]["submission_id"] == trained["launched"]["submission_id"]
    assert detail["launch"]["submission_id"] == trained["launched"]["submission_id"]  # the run recorded its job
    assert detail["config"]["storage"]["root"] == str(runs)
    assert detail["bundle"]["model_version"].startswith(f"{trained['run']}@")
    assert detail["stages"]["train"]["epochs_run"] == EPOCHS
    listed = requests.get(f"{api}/runs", params={"status": "succeeded", "family": "vit"}, timeout=10).json()
    assert trained["run"] in [r["name"] for r in listed["runs"]]


def test_metrics_stream_delivers_every_epoch_once_in_order(trained: dict[str, Any]) -> None:
    for events in (trained["live"], trained["late"]):
        metrics = [e for e in events if e["event"] == "metrics"]
        assert [int(e["id"]) for e in metrics] == list(range(EPOCHS))  # no gap, no duplicate
        assert [json.loads(e["data"])["epoch"] for e in metrics] == list(range(EPOCHS))
        assert events[-1]["event"] == "end" and json.loads(events[-1]["data"])["status"] == "succeeded"
    assert all("val_select/accuracy" in json.loads(e["data"]) for e in trained["live"] if e["event"] == "metrics")


def test_logs_of_a_job_are_kept_with_the_run(plane: Any, trained: dict[str, Any]) -> None:
    api, runs = plane
    logs = requests.get(f"{api}/runs/{trained['run']}/logs", params={"tail": 50}, timeout=10).json()
    assert any("==== end: exit 0" in line for line in logs["lines"])
    assert any("[export]" in line or "bundle" in line for line in logs["lines"])
    streamed = sse_events(requests.Session(), f"{api}/runs/{trained['run']}/logs/stream", params={"offset": 0})
    lines = [line for e in streamed if e["event"] == "log" for line in json.loads(e["data"])["lines"]]
    assert lines == (runs / trained["run"] / "logs" / "run.log").read_text().splitlines()
    assert any("(RayTrainWorker pid=" in line for line in lines)  # the workers' output, too
    assert streamed[-1]["event"] == "end" and int(streamed[-1]["id"]) == (runs / trained["run"] / "logs" / "run.log").stat().st_size


def test_a_stopped_run_is_stopped_and_can_be_deleted(plane: Any, trained: dict[str, Any]) -> None:
    api, _ = plane
    smoke = yaml.safe_load(SMOKE.read_text())
    launched = requests.post(f"{api}/runs", json={"config": smoke, "overrides": ["seed=7", "training.epochs=50"]}, timeout=300)
    assert launched.status_code == 201, launched.text
    run = launched.json()["run"]
    wait_for(lambda: requests.get(f"{api}/runs/{run}", timeout=10).json()["status"] == "running", 120, "the job to run")
    deleting = requests.delete(f"{api}/runs/{run}", timeout=10)
    assert deleting.status_code == 409 and "stop it" in deleting.json()["detail"]
    stopping = requests.post(f"{api}/runs/{run}/stop", timeout=60)
    assert stopping.status_code == 200 and stopping.json()["status"] == "stopping"
    detail = wait_for(lambda: (d := requests.get(f"{api}/runs/{run}", timeout=10).json())["status"] == "stopped" and d,
                      120, "the run to stop")
    assert detail["job"]["state"] == "stopped"
    events = sse_events(requests.Session(), f"{api}/runs/{run}/metrics/stream")
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"])["status"] == "stopped"
    compared = requests.get(f"{api}/runs/compare", params={"names": f"{trained['run']},{run}"}, timeout=10).json()
    assert {"key": "seed", "values": {trained["run"]: 0, run: 7}} in compared["config_diff"]
    assert requests.delete(f"{api}/runs/{run}", timeout=10).status_code == 204
    assert requests.get(f"{api}/runs/{run}", timeout=10).status_code == 404
