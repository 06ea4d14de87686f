"""Shared fixtures: one local Ray for the whole session and one smoke training run
shared by many assertions (a TorchTrainer costs ~20 s to start on CI's 2 cores)."""

from __future__ import annotations

import os
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
    # 4 logical CPUs on a 2-core machine: room for two train workers plus Ray Data.
    ray.init(num_cpus=4)
    yield
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
