"""model.init_from through Ray Train: the workers start from the source run's selected
backbone (the PEFT -> baseline chain uses the same path with a PEFT source)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ray_app.runs import Run
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from ray_app.stages.train import run_training
from serve.bundle import sha256_of
from tests.helpers.configs import smoke_config
from trainers.model import build_classifier


def _backbone(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items() if k.startswith("backbone.")}


def test_training_starts_from_the_source_runs_backbone(smoke_run, tmp_path: Path) -> None:
    _, source = smoke_run
    source_model = source.train.model_dir
    # A learning rate too small to move the weights: what the new run saved is what it
    # started from, to within float noise.
    cfg = smoke_config(
        tmp_path, f"model.init_from={source.root}", "seed=3", "training.epochs=1",
        "training.lr=1e-9", "training.weight_decay=0",
    )
    ctx = StageContext(cfg, Run.for_config(cfg))
    ensure_splits(ctx)
    info = run_training(ctx)
    run = ctx.run

    started, source_backbone = _backbone(run.train.model_dir), _backbone(source_model)
    assert started.keys() == source_backbone.keys()
    assert max((started[k] - source_backbone[k]).abs().max().item() for k in started) < 1e-6
    torch.manual_seed(3)
    fresh = {f"backbone.{k}": v for k, v in build_classifier(cfg.model, 10).backbone.state_dict().items()}
    assert max((fresh[k] - source_backbone[k]).abs().max().item() for k in fresh) > 0.01  # not a no-op
    recorded = {"run": source.name, "model": str(source_model.resolve()),
                "weights_sha256": sha256_of(source_model / "model.safetensors")}
    assert info["init_from"] == recorded
    assert json.loads((run.train.model_dir / "classifier.json").read_text())["init_from"] == recorded
