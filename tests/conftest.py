"""Shared fixtures: one local Ray for the whole session and one smoke training run
shared by many assertions (a TorchTrainer costs ~20 s to start on CI's 2 cores)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

# Ray clusters enforce token auth and Ray's jobs client sends the token only in this
# mode, read when Ray is first imported: before any test imports it.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def smoke_config(root: Path, *overrides: str):
    from ray_app.config import load_config

    return load_config(SMOKE, [f"storage.root={root}", *overrides])


@pytest.fixture(scope="session")
def ray_local():
    import ray
    import ray.data

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Ray Train hands the driver's DataContext to its workers: switch bars off here too.
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray_app.pipeline import start_local_ray
    from ray_app.serving import serve_environment

    # 4 logical CPUs on a 2-core machine: room for two train workers plus Ray Data.
    # Serve's environment as `ray-app serve` sets it (HAProxy ingress), so the Serve
    # tests run the configuration users get.
    with serve_environment():
        context = start_local_ray(num_cpus=4)
    yield context
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(ray_local, tmp_path_factory):
    """The smoke config trained once (3 epochs): splits, checkpoints, metrics, logits."""
    from ray_app.pipeline import ensure_splits, run_training
    from ray_app.runs import Run

    cfg = smoke_config(tmp_path_factory.mktemp("runs"), "training.epochs=3")
    run = Run.for_config(cfg)
    reader = ensure_splits(cfg, run)
    run_training(cfg, run, reader)
    return cfg, run


@pytest.fixture(scope="session")
def calibrated(smoke_run):
    """The smoke run calibrated and evaluated: (cfg, run, val_test metrics)."""
    from ray_app.pipeline import run_calibration, run_evaluation

    cfg, run = smoke_run
    run_calibration(cfg, run)
    metrics = run_evaluation(cfg, run)
    return cfg, run, metrics


@pytest.fixture(scope="session")
def smoke_bundle(calibrated) -> Path:
    """The calibrated smoke run exported: its bundle directory."""
    from ray_app.pipeline import run_export

    cfg, run, _ = calibrated
    return Path(run_export(cfg, run)["bundle"])


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Ray head with a job server (`ray start --head` on loopback, its own
    ports), shared by the tests that submit Ray jobs; its job server URL."""
    from ray_app.server.local_ray import LocalRayHead

    head = LocalRayHead(num_cpus=3, log_file=tmp_path_factory.mktemp("ray-head") / "head.log")
    try:
        yield head.start()
    finally:
        head.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def serve_port(ray_local) -> Iterator[int]:
    """Ray Serve on the session's Ray, its proxy on a free loopback port; apps are
    deployed by the tests and everything stops at the end of the session."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn on a free loopback port in a thread (lifespan and
    all, as `ray-app server` runs it); its base URL. Stopped on exit."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sse_events(session: Any, url: str, **kwargs: Any) -> list[dict[str, str]]:
    """Every event of a stream that ends by itself, parsed from the wire format."""
    events, current = [], {}
    with session.get(url, stream=True, timeout=30, **kwargs) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events


# --- the control plane, shared by its API tests and the dashboard's browser tests ----------

CONTROL_PLANE_TOKEN = "test-token"
PLANE_SMOKE_EPOCHS = 3


@dataclass
class ControlPlaneServer:
    url: str
    runs: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def session(self) -> Any:
        """A requests session that carries the server's token (one per thread)."""
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {CONTROL_PLANE_TOKEN}"
        return session


@pytest.fixture(scope="session")
def control_plane(ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneServer]:
    """`ray-app server`'s app with a token, on the session's Ray head."""
    from ray_app.server.app import create_app

    runs = tmp_path_factory.mktemp("control-plane") / "runs"
    app = create_app(runs_root=runs, ray_address=ray_head, job_poll_s=0.5, index_refresh_s=1.0,
                     token=CONTROL_PLANE_TOKEN, presets_root=REPO / "configs")
    with running_server(app) as url:
        yield ControlPlaneServer(url=url, runs=runs)


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def plane_smoke(control_plane: ControlPlaneServer) -> dict[str, Any]:
    """The smoke config saved as a template and launched from it through the API,
    followed to the end. A stream opened at once sees every epoch live; a second, opened
    once an epoch exists, gets history first, then live."""
    import threading

    import yaml

    api, http = control_plane.api, control_plane.session()
    smoke = yaml.safe_load(SMOKE.read_text())
    suggested = http.post(f"{api}/templates/suggest", json={"config": smoke}, timeout=60).json()
    saved = http.post(f"{api}/templates", json={"name": suggested["name"], "description": "smoke, 3 epochs",
                                                 "config": smoke, "overrides": [f"training.epochs={PLANE_SMOKE_EPOCHS}"]},
                      timeout=60)
    assert saved.status_code == 201, saved.text
    listed = [t["name"] for t in http.get(f"{api}/templates", timeout=10).json()]
    launched = http.post(f"{api}/runs", json={"template": suggested["name"]}, timeout=300)
    assert launched.status_code == 201, launched.text
    run = launched.json()["run"]
    live: list[dict[str, str]] = []
    watcher = threading.Thread(
        target=lambda: live.extend(sse_events(control_plane.session(), f"{api}/runs/{run}/metrics/stream")))
    watcher.start()
    duplicate = http.post(f"{api}/runs", json={"template": suggested["name"]}, timeout=60)
    wait_for(lambda: http.get(f"{api}/runs/{run}/metrics", timeout=10).json()["rows"], 600, "the first epoch")
    late = sse_events(http, f"{api}/runs/{run}/metrics/stream")
    watcher.join(timeout=600)
    wait_for(lambda: http.get(f"{api}/runs/{run}", timeout=10).json()["status"] not in ("pending", "running"), 120,
             "the run's final status")
    return {"launched": launched.json(), "run": run, "live": live, "late": late, "duplicate": duplicate,
            "template": suggested["name"], "listed_templates": listed}
