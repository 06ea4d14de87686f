"""The control plane without Ray: the run index, statuses, the metrics reader, and every
kind of bad request answered with a 4xx and a JSON reason (the server keeps serving).

Runs here are synthetic run directories, written as the pipeline writes them; the
server points at a job server that does not exist, and no test here gets as far as
submitting a job (tests/integration/test_control_plane.py does, on a real Ray head)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ray_app.control_plane.app import create_app
from ray_app.control_plane.index import RunIndex, combined_status
from ray_app.run_status import read_metrics, status_from_metadata
from tests.helpers.configs import SMOKE
from tests.helpers.runs import make_run
from tests.helpers.servers import running_server, sse_events

# --- the index ----------------------------------------------------------------------------


def test_index_filters_sorts_and_only_rereads_what_changed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "a_vit", accuracy=0.9, created="2026-11-03T00:00:00+00:00")
    make_run(runs, "b_vit", accuracy=0.7, status="failed", created="2026-11-02T00:00:00+00:00")
    make_run(runs, "c_bert", accuracy=None, created="2026-11-01T00:00:00+00:00", family_overrides=[
        "data.source.kind=csv", f"data.source.path={tmp_path}", "model.backbone.config={model_type: bert, hidden_size: 32,"
        " num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}", f"model.preprocessing.tokenizer={tmp_path}"])
    (runs / "sweeps").mkdir()  # not a run
    index = RunIndex(runs, tmp_path / "index.sqlite")
    assert index.refresh() == 3
    assert index.refresh() == 0  # nothing changed: nothing read again

    assert [r["name"] for r in index.list().runs] == ["a_vit", "b_vit", "c_bert"]  # newest first
    assert [r["name"] for r in index.list(sort="val_select/accuracy").runs] == ["a_vit", "b_vit", "c_bert"]
    assert [r["name"] for r in index.list(sort="val_select/accuracy", descending=False).runs] == ["b_vit", "a_vit", "c_bert"]
    failed = index.list(status="failed")
    assert failed.total == 1 and failed.runs[0]["message"] == "train: RuntimeError: boom"
    assert {r["name"] for r in index.list(family="bert").runs} == {"c_bert"}
    assert index.list(text="VIT").total == 2 and index.list(text="%").total == 0  # LIKE wildcards are literal
    page = index.list(limit=1, offset=1)
    assert page.total == 3 and [r["name"] for r in page.runs] == ["b_vit"]
    assert index.get("a_vit")["val_test_accuracy"] == pytest.approx(0.85)

    meta = json.loads((runs / "b_vit" / "metadata.json").read_text())
    meta["stages"]["train"].update(status="complete", error=None)
    time.sleep(0.01)
    (runs / "b_vit" / "metadata.json").write_text(json.dumps(meta))
    assert index.refresh() == 1
    assert index.get("b_vit")["status"] == "succeeded"
    import shutil

    shutil.rmtree(runs / "c_bert")
    assert index.refresh() == 1 and index.get("c_bert") is None
    assert index.rebuild() == 2


def test_runs_without_the_sort_metric_come_last_on_every_page(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, accuracy in (("a", 0.5), ("b", None), ("c", 0.9), ("d", None), ("e", 0.7)):
        make_run(runs, name, accuracy=accuracy)
    index = RunIndex(runs, tmp_path / "index.sqlite")
    index.refresh()
    best_first = ["c", "e", "a", "b", "d"]
    worst_first = ["a", "e", "c", "b", "d"]
    for descending, expected in ((None, best_first), (False, worst_first)):
        for limit in range(1, 6):
            for offset in range(0, 6):
                page = index.list(sort="val_select/accuracy", descending=descending, limit=limit, offset=offset)
                assert page.total == 5
                assert [r["name"] for r in page.runs] == expected[offset:offset + limit], (descending, limit, offset)
    assert [r["name"] for r in index.list(sort="name", descending=True).runs] == ["e", "d", "c", "b", "a"]


def test_a_refresh_reads_a_runs_config_again_only_when_it_changed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_run(runs, "a_vit")
    index = RunIndex(runs, tmp_path / "index.sqlite")
    index.refresh()
    assert index.get("a_vit")["family"] == "vit"
    config = run / "config.yaml"
    before = config.stat()
    # Not a config any more, but with the same size and time: the index takes it as unchanged.
    config.write_text("x" * before.st_size)
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    meta = json.loads((run / "metadata.json").read_text())
    meta["stages"]["train"]["best"]["val_select/accuracy"] = 0.3
    (run / "metadata.json").write_text(json.dumps(meta))
    assert index.refresh() == 1
    assert index.get("a_vit")["best_accuracy"] == 0.3 and index.get("a_vit")["family"] == "vit"
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert index.refresh() == 1
    assert index.get("a_vit")["family"] is None  # read again: it no longer validates


def test_a_launched_run_is_listed_before_its_job_writes_anything(tmp_path: Path) -> None:
    index = RunIndex(tmp_path / "runs", tmp_path / "index.sqlite")
    index.record_job("job-1", "fresh", "tmpl", "vit", "/x.yaml")
    assert index.get("fresh")["status"] == "pending" and index.get("fresh")["template"] == "tmpl"
    index.update_job("job-1", "running", "Job is currently running.")
    assert index.get("fresh")["status"] == "running"
    index.update_job("job-1", "stopped", "Job was intentionally stopped.")
    index.refresh()  # no directory, but its job keeps it listed
    assert index.get("fresh")["status"] == "stopped"
    assert index.get("fresh")["message"] == "Job was intentionally stopped."
    index.forget_run("fresh")
    assert index.get("fresh") is None and index.latest_job("fresh") is None


def test_statuses_from_metadata_and_jobs(tmp_path: Path) -> None:
    def meta(**stages: str) -> dict[str, Any]:
        return {"stages": {k: {"status": v, "error": "E: why" if v == "failed" else None} for k, v in stages.items()}}

    everything = dict.fromkeys(("splits", "train", "calibrate", "evaluate", "insights", "export"), "complete")
    assert status_from_metadata(meta(**everything)) == ("succeeded", "")
    assert status_from_metadata(meta(splits="complete", train="complete")) == ("incomplete", "")
    assert status_from_metadata(meta(splits="complete", train="failed")) == ("failed", "train: E: why")
    assert status_from_metadata(meta(train="interrupted"))[0] == "stopped"
    log = tmp_path / "run.log"
    import socket

    host = socket.gethostname()
    log.write_text(f"t [-] ==== start: ray-app run x.yaml · pid {os.getpid()} on {host} ====\n")
    assert status_from_metadata(meta(train="running"), log) == ("running", "")  # its process is alive
    dead = 2**22 + 12345  # above the kernel's pid_max default: no such process
    log.write_text(f"t [-] ==== start: ray-app run x.yaml · pid {dead} on {host} ====\nt [train] epoch 1\n")
    status, message = status_from_metadata(meta(train="running"), log)
    assert status == "failed" and f"pid {dead}" in message
    log.write_text(f"t [-] ==== start: ray-app run x.yaml · pid {dead} on another-host ====\n")
    assert status_from_metadata(meta(train="running"), log)[0] == "running"  # cannot tell from here

    assert combined_status("incomplete", "", {"state": "running", "message": "m"}) == ("running", "m")
    # the driver was killed before it could record anything: the job says what happened
    assert combined_status("running", "", {"state": "failed", "message": "Job entrypoint command failed"}) == (
        "failed", "Job entrypoint command failed")
    assert combined_status("failed", "train: E", {"state": "failed", "message": "x"}) == ("failed", "train: E")
    assert combined_status("succeeded", "", {"state": "succeeded", "message": "ok"}) == ("succeeded", "")
    assert combined_status("running", "", {"state": "stopped", "message": ""})[0] == "stopped"


# --- the metrics reader ---------------------------------------------------------------------


def test_metrics_reader_reads_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as handle:
        for epoch in range(100_000):
            handle.write(json.dumps({"epoch": epoch, "train/loss": 1.0 / (epoch + 1), "lr": 0.1}) + "\n")
        handle.write('{"epoch": 100000, "train/lo')  # a row being written
    newest = read_metrics(path, 20, "desc")
    assert [r["epoch"] for r in newest] == list(range(99_999, 99_979, -1))
    assert [r["epoch"] for r in read_metrics(path, 20, "asc", since_epoch=99_990)] == list(range(99_991, 100_000))
    assert [r["epoch"] for r in read_metrics(path, 3, "asc", since_epoch=99_990)] == [99_991, 99_992, 99_993]
    assert [r["epoch"] for r in read_metrics(path, 3, "desc", since_epoch=99_990)] == [99_999, 99_998, 99_997]
    assert [r["epoch"] for r in read_metrics(path, 3)] == [0, 1, 2]
    assert read_metrics(path, 1, "desc", keys=["lr"]) == [{"epoch": 99_999, "lr": 0.1}]
    assert read_metrics(path, 5, "asc", since_epoch=99_999) == []
    assert read_metrics(tmp_path / "none.jsonl", 5, "desc") == []


# --- the API: bad input -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("cp")
    runs = root / "runs"
    make_run(runs, "done_run", log="t [-] ==== start: ray-app run x · pid 1 on h ====\nt [train] hello\n"
             "t [-] ==== end: exit 0 after 1.0s ====\n")
    make_run(runs, "other_run", accuracy=0.6, family_overrides=["training.lr=0.01"])
    # A job server that is not there: nothing here may reach Ray.
    app = create_app(runs_root=runs, ray_address="http://127.0.0.1:9", token="s3cret", presets_root=SMOKE.parent)
    with running_server(app) as url:
        session = requests.Session()
        session.headers["Authorization"] = "Bearer s3cret"
        yield url, session, runs


def check(response: requests.Response, status: int, error: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    text = json.dumps(body["detail"])
    for fragment in fragments:
        assert fragment in text, text


def test_a_server_without_ray_serves_runs_and_refuses_launches(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "done_run")
    app = create_app(runs_root=runs, ray_jobs=False)
    assert app.state.plane.launcher.local_head is None  # no head to start
    with running_server(app) as url:
        ray = requests.get(f"{url}/healthz").json()["ray"]
        assert ray["ready"] is False and ray["address"] is None and "without Ray jobs" in ray["error"]
        assert requests.get(f"{url}/api/v1/runs").json()["total"] == 1
        assert requests.get(f"{url}/api/v1/runs/done_run/metrics").json()["rows"]
        smoke = yaml.safe_load(SMOKE.read_text())
        # The config is still checked first: a bad one gets its problems, not a 503.
        check(requests.post(f"{url}/api/v1/runs", json={"config": smoke, "overrides": ["training.epochz=2"]}),
              422, "invalid config", "training.epochz")
        check(requests.post(f"{url}/api/v1/runs", json={"config": smoke}), 503, "unavailable", "without Ray jobs")
        assert requests.get(f"{url}/api/v1/runs").json()["total"] == 1  # nothing recorded as launched
    assert not (runs / ".launches").exists() and not (runs / ".ray-head.log").exists()


def test_a_launch_never_retrains_a_finished_run_unasked(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    trained = make_run(runs, "smoke_vit_baseline_s0")
    recorded = (trained / "config.yaml").read_text()
    app = create_app(runs_root=runs, ray_jobs=False)
    smoke = yaml.safe_load(SMOKE.read_text())
    with running_server(app) as url:
        # Only the learning rate changed: the same name, so the same directory.
        changed = {"config": smoke, "overrides": ["training.lr=0.05"]}
        refused = requests.post(f"{url}/api/v1/runs", json=changed)
        check(refused, 409, "run exists", "smoke_vit_baseline_s0", "training.lr", '\\"on_exists\\": \\"new\\"')
        assert refused.json()["run"] == "smoke_vit_baseline_s0" and refused.json()["link"] == "/runs/smoke_vit_baseline_s0"
        check(requests.post(f"{url}/api/v1/runs", json={"config": smoke}), 409, "run exists", "with this config")
        check(requests.post(f"{url}/api/v1/runs/smoke_vit_baseline_s0/rerun", json={"overrides": ["training.lr=0.05"]}),
              409, "run exists")
        check(requests.post(f"{url}/api/v1/runs", json={**changed, "on_exists": "overwrite"}), 422, "invalid request",
              "on_exists")
        # Choosing gets past the name (here to the missing job server: nothing is recorded either way).
        check(requests.post(f"{url}/api/v1/runs", json={**changed, "on_exists": "new"}), 503, "unavailable")
        resolved = requests.post(f"{url}/api/v1/configs/resolve", json=changed).json()
        assert resolved["existing"] == {"run": "smoke_vit_baseline_s0", "status": "succeeded", "same_config": False,
                                        "link": "/runs/smoke_vit_baseline_s0", "next_free": "smoke_vit_baseline_s0-2"}
        same = requests.post(f"{url}/api/v1/configs/resolve", json={"config": smoke}).json()
        assert same["existing"]["same_config"] is True
        fresh = requests.post(f"{url}/api/v1/configs/resolve", json={"config": smoke, "overrides": ["seed=4"]}).json()
        assert fresh["run"] == "smoke_vit_baseline_s4" and fresh["existing"] is None
    assert (trained / "config.yaml").read_text() == recorded  # the run is as it was
    assert not (runs / ".launches").exists()


def test_a_body_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    app = create_app(runs_root=tmp_path / "runs", ray_jobs=False, max_body_bytes=64 * 1024)
    smoke = yaml.safe_load(SMOKE.read_text())
    with running_server(app) as url:
        started = time.monotonic()
        huge = requests.post(f"{url}/api/v1/runs", json={"config": smoke, "overrides": [f"seed={i}" for i in range(300_000)]})
        check(huge, 413, "request too large", "65,536 bytes")
        assert time.monotonic() - started < 10
        # Without a Content-Length (chunked), counted as it arrives.
        chunks = (b'{"config": {}, "overrides": [' + b'"seed=1",' * 2000 + b'"seed=2"]}' for _ in range(8))
        check(requests.post(f"{url}/api/v1/configs/resolve", data=chunks, headers={"content-type": "application/json"}),
              413, "request too large")
        assert requests.get(f"{url}/healthz").status_code == 200  # still serving


def _silent_listener() -> Any:
    """A port that accepts connections (the kernel completes the handshake) and never
    answers: a head that hangs."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


@pytest.mark.parametrize("head", ["refused", "silent"])
def test_an_unreachable_head_is_reported_in_seconds(tmp_path: Path, head: str) -> None:
    listener = _silent_listener()
    port = listener.getsockname()[1]
    if head == "refused":
        listener.close()  # nothing listens there any more: connections are refused
    app = create_app(runs_root=tmp_path / "runs", ray_address=f"http://127.0.0.1:{port}", ray_timeout_s=2.0)
    smoke = yaml.safe_load(SMOKE.read_text())
    try:
        with running_server(app) as url:
            started = time.monotonic()
            health = requests.get(f"{url}/healthz", timeout=10).json()["ray"]
            while health["error"] is None and time.monotonic() - started < 10:
                time.sleep(0.2)
                health = requests.get(f"{url}/healthz", timeout=10).json()["ray"]
            assert health["ready"] is False and f"127.0.0.1:{port}" in health["error"], health
            assert time.monotonic() - started < 10
            started = time.monotonic()
            launch = requests.post(f"{url}/api/v1/runs", json={"config": smoke}, timeout=60)
            check(launch, 503, "unavailable", f"127.0.0.1:{port}")
            assert time.monotonic() - started < 10
            assert requests.get(f"{url}/api/v1/runs", timeout=10).json()["total"] == 0  # no failed run recorded
    finally:
        listener.close()


def test_token_is_required_but_health_and_docs_stay_open(api: Any) -> None:
    url, session, _ = api
    check(requests.get(f"{url}/api/v1/runs"), 401, "unauthorized", "Authorization: Bearer")
    check(requests.get(f"{url}/api/v1/runs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert requests.get(f"{url}/api/v1/runs", cookies={"ray_app_token": "s3cret"}).status_code == 200
    assert requests.get(f"{url}/healthz").json()["status"] == "ok"
    assert requests.get(f"{url}/openapi.json").json()["info"]["title"] == "ray-app control plane"
    assert requests.get(f"{url}/docs").status_code == 200


def test_unknown_and_path_like_names(api: Any) -> None:
    url, session, _ = api
    check(session.get(f"{url}/api/v1/runs/ghost"), 404, "not found", "no run named 'ghost'")
    # Streams too: answered before the stream starts, not a 500 from inside it.
    for stream in ("metrics/stream", "logs/stream", "logs"):
        check(session.get(f"{url}/api/v1/runs/ghost/{stream}", timeout=10), 404, "not found", "no run named 'ghost'")
    for path in ("..%2Fetc", "%2E%2E", "a%2Fb/metrics", "x%5Cy"):
        check(session.get(f"{url}/api/v1/runs/{path}"), 400, "invalid name")
    check(session.get(f"{url}/api/v1/runs/.hidden"), 400, "invalid name", "not starting with '.'")
    check(session.delete(f"{url}/api/v1/runs/ghost"), 404, "not found")
    check(session.post(f"{url}/api/v1/runs/ghost/stop"), 404, "not found")


def test_bad_launches_list_every_problem_and_start_nothing(api: Any) -> None:
    url, session, runs = api
    smoke = yaml.safe_load(SMOKE.read_text())
    check(session.post(f"{url}/api/v1/runs", data="{not json", headers={"content-type": "application/json"}),
          400, "invalid JSON")
    check(session.post(f"{url}/api/v1/runs", json={}), 422, "invalid request", "exactly one of 'template' or 'config'")
    check(session.post(f"{url}/api/v1/runs", json={"config": smoke, "overrides": ["training.epochz=2", "training.lr=fast", "oops"]}),
          422, "invalid config", "override 'oops'", "training.epochz: unknown key; did you mean 'epochs'?",
          "training.lr: Input should be a valid number")
    check(session.post(f"{url}/api/v1/runs", json={"config": smoke, "overrides": [
        "data.source.kind=image_folder", f"data.source.path={runs / 'missing'}"]}), 422, "invalid data", "does not exist")
    check(session.post(f"{url}/api/v1/runs", json={"config": smoke, "bogus": 1}), 422, "invalid request", "bogus")
    check(session.post(f"{url}/api/v1/runs", json={"template": "../x"}), 400, "invalid name")
    assert not (runs / ".launches").exists() or not list((runs / ".launches").iterdir())
    assert session.get(f"{url}/api/v1/runs").json()["total"] == 2  # nothing launched


def test_bounded_reads_and_a_finished_runs_streams(api: Any) -> None:
    url, session, _ = api
    check(session.get(f"{url}/api/v1/runs/done_run/logs", params={"tail": 10_001}), 422, "invalid request",
          "less than or equal to 10000")
    check(session.get(f"{url}/api/v1/runs", params={"limit": 0}), 422, "invalid request")
    check(session.get(f"{url}/api/v1/runs", params={"sort": "bogus"}), 422, "invalid request")
    logs = session.get(f"{url}/api/v1/runs/done_run/logs", params={"tail": 2}).json()
    assert logs["lines"] == ["t [train] hello", "t [-] ==== end: exit 0 after 1.0s ===="]
    rows = session.get(f"{url}/api/v1/runs/done_run/metrics", params={"limit": 2, "order": "desc"}).json()["rows"]
    assert [r["epoch"] for r in rows] == [2, 1]

    events = sse_events(session, f"{url}/api/v1/runs/done_run/metrics/stream")
    assert [(e["event"], e.get("id")) for e in events] == [("metrics", "0"), ("metrics", "1"), ("metrics", "2"), ("end", "2")]
    assert json.loads(events[-1]["data"])["status"] == "succeeded"
    resumed = sse_events(session, f"{url}/api/v1/runs/done_run/metrics/stream", headers={"Last-Event-ID": "1"})
    assert [e.get("id") for e in resumed] == ["2", "2"]
    log_events = sse_events(session, f"{url}/api/v1/runs/done_run/logs/stream", params={"offset": 0})
    assert json.loads(log_events[0]["data"])["lines"][1] == "t [train] hello" and log_events[-1]["event"] == "end"


def test_compare_stop_and_delete_of_finished_runs(api: Any) -> None:
    url, session, runs = api
    compared = session.get(f"{url}/api/v1/runs/compare", params={"names": "done_run,other_run"}).json()
    assert compared["config_diff"] == [{"key": "training.lr", "values": {"done_run": 0.003, "other_run": 0.01}}]
    assert compared["results"]["other_run"]["best_accuracy"] == 0.6
    assert [r["epoch"] for r in compared["curves"]["done_run"]] == [0, 1, 2]
    check(session.get(f"{url}/api/v1/runs/compare", params={"names": "done_run"}), 422, "invalid request", "2 to 10")
    check(session.post(f"{url}/api/v1/runs/done_run/stop"), 409, "conflict", "no pending or running job")
    make_run(runs, "doomed")
    session.post(f"{url}/api/v1/index/rebuild")
    assert session.delete(f"{url}/api/v1/runs/doomed").status_code == 204
    assert not (runs / "doomed").exists()
    check(session.get(f"{url}/api/v1/runs/doomed"), 404, "not found")
    assert session.get(f"{url}/healthz").status_code == 200  # still serving after all of the above


def test_templates_suggest_save_list_get_and_delete(api: Any) -> None:
    url, session, runs = api
    smoke = yaml.safe_load(SMOKE.read_text())
    suggestion = session.post(f"{url}/api/v1/templates/suggest", json={"config": smoke, "overrides": ["training.lr=0.002"]}).json()
    assert suggestion["name"] == "vit-h32-l2_sklearn-digits_baseline", suggestion
    assert "LR: 0.002" in suggestion["description"] and suggestion["family"] == "vit"
    check(session.post(f"{url}/api/v1/templates/suggest", json={"config": smoke, "overrides": ["training.epochz=1"]}),
          422, "invalid config", "did you mean 'epochs'")

    body = {"name": "smoke-t", "description": "edited by a person", "config": smoke, "overrides": ["training.epochs=3"]}
    saved = session.post(f"{url}/api/v1/templates", json=body)
    assert saved.status_code == 201, saved.text
    assert saved.json()["family"] == "vit" and saved.json()["config"]["training"]["epochs"] == 3
    check(session.post(f"{url}/api/v1/templates", json=body), 409, "conflict", "already exists")
    assert session.post(f"{url}/api/v1/templates", json={**body, "overwrite": True}).status_code == 201
    check(session.post(f"{url}/api/v1/templates", json={**body, "name": "../evil"}), 400, "invalid name")
    check(session.post(f"{url}/api/v1/templates", json={**body, "name": "bad-cfg", "overrides": ["training.lr=-1", "training.epochs=0"]}),
          422, "invalid config", "training.lr", "training.epochs")
    templates_root = runs.parent / "templates"
    assert sorted(p.name for p in templates_root.iterdir()) == ["smoke-t.yaml"]  # nothing half-written, no bad-cfg

    listed = session.get(f"{url}/api/v1/templates").json()
    assert [(t["name"], t["description"], t["runs"]) for t in listed] == [("smoke-t", "edited by a person", 0)]
    assert session.get(f"{url}/api/v1/templates/smoke-t").json()["config"]["training"]["epochs"] == 3
    check(session.get(f"{url}/api/v1/templates/ghost"), 404, "not found", "no template named 'ghost'")
    check(session.post(f"{url}/api/v1/runs", json={"template": "ghost"}), 404, "not found")
    assert session.delete(f"{url}/api/v1/templates/smoke-t").status_code == 204
    check(session.delete(f"{url}/api/v1/templates/smoke-t"), 404, "not found")


def test_families_schema_backbone_and_variants(api: Any) -> None:
    url, session, _ = api
    families = {f["name"]: f for f in session.get(f"{url}/api/v1/families").json()}
    assert {"vit", "dinov2", "dinov3_vit", "bert", "pretrained"} <= set(families)
    assert families["vit"]["variants"] == 2 and families["bert"]["variants"] == 0  # the two runs are ViTs
    vit = session.get(f"{url}/api/v1/families/vit").json()
    hidden = vit["params_schema"]["properties"]["hidden_size"]
    assert hidden["default"] == 768 and hidden["description"]
    section = session.post(f"{url}/api/v1/families/vit/backbone", json={"hidden_size": 64, "num_hidden_layers": 4,
                                                                        "num_attention_heads": 4}).json()
    assert section["backbone"] == {"config": {"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 4,
                                              "num_attention_heads": 4}}
    assert section["variant"] == "vit-h64-l4" and "Heads: 4" in section["facts"]
    check(session.post(f"{url}/api/v1/families/vit/backbone", json={"hidden_size": 65, "num_attention_heads": 4}),
          422, "invalid config", "not a multiple")
    variants = session.get(f"{url}/api/v1/families/vit/variants").json()
    assert [v["variant"] for v in variants] == ["vit-h32-l2"]
    assert {r["name"] for r in variants[0]["runs"]} == {"done_run", "other_run"}
    check(session.get(f"{url}/api/v1/families/ghost"), 404, "not found", "no model family named 'ghost'")
    check(session.get(f"{url}/api/v1/families/ghost/variants"), 404, "not found")
    check(session.get(f"{url}/api/v1/runs/done_run/storyboard"), 409, "not ready", "ray-app insights done_run")


def test_dashboard_pages_sign_in_and_offline_assets(api: Any) -> None:
    url, _, _ = api
    browser = requests.Session()
    first = browser.get(f"{url}/runs/done_run", allow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Fruns%2Fdone_run"
    refused = browser.post(f"{url}/login", data={"token": "nope", "next": "/"}, allow_redirects=False)
    assert refused.status_code == 401 and "That token is not this server" in refused.text
    signed = browser.post(f"{url}/login", data={"token": "s3cret", "next": "//evil.example/x"}, allow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # never off-site
    assert "httponly" in signed.headers["set-cookie"].lower()
    page = browser.get(f"{url}/runs/done_run")
    assert page.status_code == 200 and 'data-run="done_run"' in page.text and "/static/vendor/plotly.min.js" in page.text
    assert "cdn" not in page.text.lower()
    assert browser.get(f"{url}/runs/..hidden").status_code == 400
    plotly_js = browser.get(f"{url}/static/vendor/plotly.min.js")
    assert plotly_js.status_code == 200 and len(plotly_js.content) > 1_000_000  # the whole library, served locally
    assert browser.get(f"{url}/static/run.js").status_code == 200
    assert browser.get(f"{url}/api/v1/runs").status_code == 200  # the cookie opens the API too
    for path in ("/", "/launch", "/compare?names=a,b", "/families", "/templates"):
        assert browser.get(f"{url}{path}").status_code == 200, path


def test_presets_and_resolving_a_config(api: Any) -> None:
    url, session, runs = api
    presets = {p["name"]: p for p in session.get(f"{url}/api/v1/presets").json()}
    assert presets["digits"]["command"] == "ray-app train configs/digits.yaml"
    assert session.get(f"{url}/api/v1/presets/smoke").json()["training"]["epochs"] == 5
    check(session.get(f"{url}/api/v1/presets/ghost"), 404, "not found")
    check(session.get(f"{url}/api/v1/presets/..%2Fx"), 400, "invalid name")
    smoke = yaml.safe_load(SMOKE.read_text())
    resolved = session.post(f"{url}/api/v1/configs/resolve", json={"config": smoke, "overrides": ["seed=3"]}).json()
    assert resolved["run"] == "smoke_vit_baseline_s3" and resolved["config"]["storage"]["root"] == str(runs)
    assert resolved["config"]["calibration"]["guardrail"]["center_mode"] == "auto"  # defaults filled in
    check(session.post(f"{url}/api/v1/configs/resolve", json={"config": smoke, "overrides": ["seed=-1"]}),
          422, "invalid config", "seed")


def test_a_runs_lr_range_test_is_served_and_a_fixed_rate_is_a_404(api: Any) -> None:
    from ray_app.runs import Run, write_json
    from trainers.lr_range import LrRangeResult

    url, session, runs = api
    rates = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    result = LrRangeResult(lrs=rates, losses=[2.3, 2.2, 1.4, 0.9, 3.0], suggested_lr=1e-3, steps_run=5,
                           stopped_early=True)
    write_json(Run(runs / "done_run").train.lr_range, result.to_dict())
    served = session.get(f"{url}/api/v1/runs/done_run/lr-range").json()
    assert served["suggested_lr"] == 1e-3 and served["lrs"] == rates and served["stopped_early"] is True
    check(session.get(f"{url}/api/v1/runs/other_run/lr-range"), 404, "not found", "fixed training.lr, not lr: auto")
    check(session.get(f"{url}/api/v1/runs/no_such_run/lr-range"), 404, "not found")


def test_the_monitors_drift_thresholds_are_server_settings_checked_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from calibration.monitor import DEFAULT_DRIFT_P
    from ray_app.cli import main
    from ray_app.control_plane.settings import ServerSettings

    settings = ServerSettings(runs_root=tmp_path / "runs", drift_psi=0.3)
    assert (settings.drift_psi, settings.drift_p) == (0.3, DEFAULT_DRIFT_P)
    # A bad threshold stops `ray-app server` before it listens: exit 2, the setting named.
    assert main(["server", "--no-ray", "--runs-root", str(tmp_path / "runs"), "--drift-p", "2"]) == 2
    said = capsys.readouterr().err
    assert "drift_p" in said and "less than 1" in said and "Traceback" not in said
    assert main(["server", "--no-ray", "--runs-root", str(tmp_path / "runs"), "--drift-psi", "0"]) == 2
    assert "drift_psi" in capsys.readouterr().err
