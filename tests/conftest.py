"""Shared fixtures: one local Ray for the whole session and one smoke training run
shared by many assertions (a TorchTrainer costs ~20 s to start on CI's 2 cores)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


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
