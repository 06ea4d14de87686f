"""The control plane on a real Ray head: runs launched as Ray jobs through the API, their
metrics streamed live (history, then new epochs, no gap, no duplicate), their logs, a
run stopped, statuses that combine the job and the run's own record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_app.ray_runtime import free_port
from tests.helpers.configs import REPO, SMOKE
from tests.helpers.servers import CONTROL_PLANE_TOKEN, PLANE_SMOKE_EPOCHS, ControlPlaneServer, sse_events, wait_for

EPOCHS = PLANE_SMOKE_EPOCHS


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlaneServer) -> tuple[str, Path]:
    return control_plane.api, control_plane.runs


@pytest.fixture(scope="module")
def http(control_plane: ControlPlaneServer) -> Any:
    return control_plane.session()


@pytest.fixture(scope="module")
def trained(plane_smoke: dict[str, Any], control_plane: ControlPlaneServer) -> dict[str, Any]:
    return {**plane_smoke, "runs": control_plane.runs}


def test_a_launched_run_succeeds_and_records_its_job(plane: Any, trained: dict[str, Any], http: Any) -> None:
    api, runs = plane
    unauthorized = http.get(f"{api}/runs", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert unauthorized.status_code == 401
    assert trained["launched"]["status"] == "pending" and trained["launched"]["family"] == "vit"
    assert trained["template"] in trained["listed_templates"]
    assert trained["duplicate"].status_code == 409
    assert "already running" in trained["duplicate"].json()["detail"]
    detail = http.get(f"{api}/runs/{trained['run']}", timeout=10).json()
    assert detail["status"] == "succeeded", detail
    assert detail["job"]["state"] == "succeeded" and detail["job"]["submission_id"] == trained["launched"]["submission_id"]
    assert detail["launch"]["submission_id"] == trained["launched"]["submission_id"]  # the run recorded its job
    assert detail["config"]["storage"]["root"] == str(runs)
    assert detail["bundle"]["model_version"].startswith(f"{trained['run']}@")
    assert detail["stages"]["train"]["epochs_run"] == EPOCHS
    listed = http.get(f"{api}/runs", params={"status": "succeeded", "family": "vit"}, timeout=10).json()
    assert trained["run"] in [r["name"] for r in listed["runs"]]


def test_the_run_records_its_template_and_is_a_variant_of_its_family(plane: Any, trained: dict[str, Any], http: Any) -> None:
    api, _ = plane
    detail = http.get(f"{api}/runs/{trained['run']}", timeout=10).json()
    assert trained["launched"]["template"] == trained["template"] == detail["template"]
    assert detail["template_record"]["name"] == trained["template"]
    assert detail["template_record"]["description"] == "smoke, 3 epochs"
    by_template = http.get(f"{api}/runs", params={"template": trained["template"]}, timeout=10).json()
    assert trained["run"] in [r["name"] for r in by_template["runs"]]
    counts = {t["name"]: t["runs"] for t in http.get(f"{api}/templates", timeout=10).json()}
    assert counts[trained["template"]] == by_template["total"] >= 1
    variants = http.get(f"{api}/families/vit/variants", timeout=10).json()
    assert any(trained["run"] in [r["name"] for r in v["runs"]] for v in variants)


def test_insights_and_budget_of_the_run(plane: Any, trained: dict[str, Any], http: Any) -> None:
    api, _ = plane
    run = trained["run"]
    first = http.get(f"{api}/runs/{run}/meaning-map", params={"color": "decision"}, timeout=120).json()
    again = http.get(f"{api}/runs/{run}/meaning-map", params={"color": "decision"}, timeout=120).json()
    assert again["cached"] and [p["id"] for p in again["points"]] == [p["id"] for p in first["points"]]
    assert {p["color"] for p in first["points"]} <= {"accept", "assist", "abstain"}
    point = first["points"][0]
    shown = http.get(f"{api}/runs/{run}/examples/{point['id']}", timeout=30).json()
    assert shown["kind"] == "image" and shown["label"] == point["label"] and shown["image"]
    story = http.get(f"{api}/runs/{run}/storyboard", timeout=30).json()
    assert set(story["categories"]) >= {"confident_right", "confident_wrong"}
    views = http.get(f"{api}/runs/{run}/calibration-views", timeout=30).json()
    assert views["run"] == run and views["reliability"]
    bad = http.get(f"{api}/runs/{run}/meaning-map", params={"method": "umap"}, timeout=10)
    assert bad.status_code == 422
    budget = http.post(f"{api}/budget", json={"template": trained["template"]}, timeout=600)
    assert budget.status_code == 200, budget.text
    assert budget.json()["data"]["rows"]["train"] > 0 and budget.json()["flops"]["forward_per_sample"] > 0
    assert http.post(f"{api}/budget", json={"template": trained["template"]}, timeout=60).json()["cached"]


def test_metrics_stream_delivers_every_epoch_once_in_order(trained: dict[str, Any]) -> None:
    for events in (trained["live"], trained["late"]):
        metrics = [e for e in events if e["event"] == "metrics"]
        assert [int(e["id"]) for e in metrics] == list(range(EPOCHS))  # no gap, no duplicate
        assert [json.loads(e["data"])["epoch"] for e in metrics] == list(range(EPOCHS))
        assert events[-1]["event"] == "end" and json.loads(events[-1]["data"])["status"] == "succeeded"
    assert all("val_select/accuracy" in json.loads(e["data"]) for e in trained["live"] if e["event"] == "metrics")


def test_logs_of_a_job_are_kept_with_the_run(plane: Any, trained: dict[str, Any], http: Any) -> None:
    api, runs = plane
    logs = http.get(f"{api}/runs/{trained['run']}/logs", params={"tail": 50}, timeout=10).json()
    assert any("==== end: exit 0" in line for line in logs["lines"])
    assert any("[export]" in line or "bundle" in line for line in logs["lines"])
    streamed = sse_events(http, f"{api}/runs/{trained['run']}/logs/stream", params={"offset": 0})
    lines = [line for e in streamed if e["event"] == "log" for line in json.loads(e["data"])["lines"]]
    assert lines == (runs / trained["run"] / "logs" / "run.log").read_text().splitlines()
    assert any("(RayTrainWorker pid=" in line for line in lines)  # the workers' output, too
    assert streamed[-1]["event"] == "end" and int(streamed[-1]["id"]) == (runs / trained["run"] / "logs" / "run.log").stat().st_size


def test_a_finished_run_is_never_retrained_in_place(plane: Any, trained: dict[str, Any], http: Any) -> None:
    api, runs = plane
    before = (runs / trained["run"] / "config.yaml").read_text()
    relaunch = {"template": trained["template"], "overrides": ["training.lr=0.05"]}
    refused = http.post(f"{api}/runs", json=relaunch, timeout=60)
    assert refused.status_code == 409, refused.text
    assert refused.json()["run"] == trained["run"] and "training.lr" in refused.json()["detail"]
    assert (runs / trained["run"] / "config.yaml").read_text() == before
    assert http.get(f"{api}/runs/{trained['run']}", timeout=10).json()["job"]["submission_id"] == \
        trained["launched"]["submission_id"]  # no job was started for it


def test_a_stopped_run_is_stopped_and_can_be_deleted(
    plane: Any, trained: dict[str, Any], http: Any, control_plane: ControlPlaneServer
) -> None:
    api, _ = plane
    # Launched as a user would, with `ray-app submit`. The trained run's name is taken:
    # "new" trains the same config under the next free name.
    env = {**os.environ, "RAY_APP_SERVER_TOKEN": CONTROL_PLANE_TOKEN}
    submitted = subprocess.run(
        [sys.executable, "-m", "ray_app", "submit", str(SMOKE), "-o", "training.epochs=50", "--on-exists", "new",
         "--server", control_plane.url], capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    # The next free name: -2 unless another test of the session took it first.
    run = re.match(r"run (\S+) · job ", submitted.stdout).group(1)
    assert re.fullmatch(rf"{trained['run']}-\d+", run), submitted.stdout
    # The curl hints work as printed: they carry the token header (the variable, never the token).
    follow = next(line for line in submitted.stdout.splitlines() if "follow:" in line)
    assert follow.strip() == (f'follow: curl -N -H "Authorization: Bearer $RAY_APP_SERVER_TOKEN" '
                              f"{control_plane.url}/api/v1/runs/{run}/metrics/stream")
    assert CONTROL_PLANE_TOKEN not in submitted.stdout
    wait_for(lambda: http.get(f"{api}/runs/{run}", timeout=10).json()["status"] == "running", 120, "the job to run")
    deleting = http.delete(f"{api}/runs/{run}", timeout=10)
    assert deleting.status_code == 409 and "stop it" in deleting.json()["detail"]
    stopping = http.post(f"{api}/runs/{run}/stop", timeout=60)
    assert stopping.status_code == 200 and stopping.json()["status"] == "stopping"
    detail = wait_for(lambda: (d := http.get(f"{api}/runs/{run}", timeout=10).json())["status"] == "stopped" and d,
                      120, "the run to stop")
    assert detail["job"]["state"] == "stopped"
    events = sse_events(http, f"{api}/runs/{run}/metrics/stream")
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"])["status"] == "stopped"
    compared = http.get(f"{api}/runs/compare", params={"names": f"{trained['run']},{run}"}, timeout=10).json()
    assert {"key": "training.epochs", "values": {trained["run"]: EPOCHS, run: 50}} in compared["config_diff"]
    assert http.delete(f"{api}/runs/{run}", timeout=10).status_code == 204
    assert http.get(f"{api}/runs/{run}", timeout=10).status_code == 404


def test_a_head_that_wants_a_token_is_reported_in_seconds(ray_head: str, tmp_path: Path) -> None:
    """`ray-app server` pointed at a token-auth head without Ray's token mode: said on
    /healthz and in a launch's 503 within seconds, and SIGTERM stops it at once."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    server = subprocess.Popen(
        [sys.executable, "-m", "ray_app", "server", "--port", str(port), "--ray-address", ray_head,
         "--runs-root", str(tmp_path / "runs")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    import requests

    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_for(lambda: _health(url), 60, "the server to answer and know about the head")
        assert health["ray"]["ready"] is False and "token authentication" in health["ray"]["error"]
        assert "RAY_AUTH_MODE=token" in health["ray"]["error"]
        started = time.monotonic()
        launch = requests.post(f"{url}/api/v1/runs", json={"config": yaml.safe_load(SMOKE.read_text())}, timeout=60)
        assert launch.status_code == 503 and "token authentication" in launch.json()["detail"], launch.text
        assert time.monotonic() - started < 15
        assert requests.get(f"{url}/api/v1/runs", timeout=10).json()["total"] == 0  # nothing recorded as failed
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        assert time.monotonic() - started < 15, output
        assert "Traceback" not in output, output
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _health(url: str) -> dict[str, Any] | None:
    import requests

    try:
        health = requests.get(f"{url}/healthz", timeout=5).json()
    except requests.ConnectionError:
        return None
    return health if health["ray"]["error"] and "starting" not in health["ray"]["error"] else None
