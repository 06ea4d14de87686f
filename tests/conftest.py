"""Shared fixtures: one local Ray for the whole session and one smoke training run
shared by many assertions (a TorchTrainer costs ~20 s to start on CI's 2 cores); a Ray
head with a job server and the control plane on it, shared by the API and browser
tests. Helpers live in tests/helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.configs import REPO, SMOKE, smoke_config
from tests.helpers.servers import (
    CONTROL_PLANE_DRIFT_PSI,
    CONTROL_PLANE_TOKEN,
    PLANE_SMOKE_EPOCHS,
    ControlPlaneServer,
    running_server,
    sse_events,
    wait_for,
)

# Ray clusters enforce token auth and Ray's jobs client sends the token only in this
# mode, read when Ray is first imported: before any test imports it.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def ray_local():
    import ray
    import ray.data

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Ray Train hands the driver's DataContext to its workers: switch bars off here too.
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray_app.ray_runtime import serve_environment, start_local_ray

    # 4 logical CPUs on a 2-core machine: room for two train workers plus Ray Data.
    # Serve's environment as `ray-app serve` sets it (HAProxy ingress), so the Serve
    # tests run the configuration users get.
    with serve_environment():
        context = start_local_ray(num_cpus=4)
    yield context
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(ray_local, tmp_path_factory):
    """The smoke config trained once (3 epochs): splits, checkpoints, metrics, logits.
    (cfg, run); `StageContext(cfg, run)` runs further stages on it."""
    from ray_app.stages.context import StageContext
    from ray_app.stages.splits import ensure_splits
    from ray_app.stages.train import run_training

    ctx = StageContext.for_config(smoke_config(tmp_path_factory.mktemp("runs"), "training.epochs=3"))
    ensure_splits(ctx)
    run_training(ctx)
    return ctx.cfg, ctx.run


@pytest.fixture(scope="session")
def calibrated(smoke_run):
    """The smoke run calibrated and evaluated: (cfg, run, val_test metrics)."""
    from ray_app.stages import CALIBRATE, EVALUATE
    from ray_app.stages.context import StageContext

    cfg, run = smoke_run
    CALIBRATE.run(StageContext(cfg, run))
    metrics = EVALUATE.run(StageContext(cfg, run))
    return cfg, run, metrics


@pytest.fixture(scope="session")
def smoke_bundle(calibrated) -> Path:
    """The calibrated smoke run exported: its bundle directory."""
    from ray_app.stages import EXPORT
    from ray_app.stages.context import StageContext

    cfg, run, _ = calibrated
    return Path(EXPORT.run(StageContext(cfg, run))["bundle"])


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Ray head with a job server (`ray start --head` on loopback, its own
    ports), shared by the tests that submit Ray jobs; its job server URL."""
    from ray_app.control_plane.local_ray import LocalRayHead

    head = LocalRayHead(num_cpus=3, log_file=tmp_path_factory.mktemp("ray-head") / "head.log")
    try:
        yield head.start()
    finally:
        head.stop()


@pytest.fixture(scope="session")
def serve_port(ray_local) -> Iterator[int]:
    """Ray Serve on the session's Ray, its proxy on a free loopback port; apps are
    deployed by the tests and everything stops at the end of the session."""
    from ray import serve

    from ray_app.ray_runtime import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(scope="session")
def control_plane(ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneServer]:
    """`ray-app server`'s app with a token, on the session's Ray head."""
    from ray_app.control_plane.app import create_app

    runs = tmp_path_factory.mktemp("control-plane") / "runs"
    app = create_app(runs_root=runs, ray_address=ray_head, job_poll_s=0.5, index_refresh_s=1.0,
                     token=CONTROL_PLANE_TOKEN, presets_root=REPO / "configs", drift_psi=CONTROL_PLANE_DRIFT_PSI)
    with running_server(app) as url:
        yield ControlPlaneServer(url=url, runs=runs)


@pytest.fixture(scope="session")
def plane_smoke(control_plane: ControlPlaneServer) -> dict[str, Any]:
    """The smoke config saved as a template (its learning rate chosen by a range test:
    lr auto) and launched from it through the API, followed to the end. A stream opened at once sees every epoch live; a second, opened
    once an epoch exists, gets history first, then live."""
    import threading

    import yaml

    api, http = control_plane.api, control_plane.session()
    smoke = yaml.safe_load(SMOKE.read_text())
    suggested = http.post(f"{api}/templates/suggest", json={"config": smoke}, timeout=60).json()
    saved = http.post(f"{api}/templates", json={"name": suggested["name"], "description": "smoke, 3 epochs",
                                                 "config": smoke, "overrides": [f"training.epochs={PLANE_SMOKE_EPOCHS}",
                                                                           "training.lr=auto"]},
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
