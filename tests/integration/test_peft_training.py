"""PEFT mode on Ray Train: two DDP workers, a killed group resumed from a
trainable-only checkpoint, and a merged model that loads without peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.configs import smoke_config, trained
from tests.helpers.faults import KillWorkersAt
from trainers.checkpoint import PEFT_SETUP_FILE
from trainers.model import build_classifier, load_classifier

pytestmark = pytest.mark.usefixtures("ray_local")


def test_two_worker_peft_run_resumes_and_exports_merged_weights(tmp_path: Path) -> None:
    cfg = smoke_config(
        tmp_path, "training.mode=peft", "training.peft.unfreeze_last_blocks=1", "training.peft.r=4",
        "scaling.num_workers=2", "training.epochs=2", "training.lr=auto", "training.lr_range_steps=12",
    )
    ctx = trained(cfg, before_epoch=KillWorkersAt(1))  # both workers die at the start of epoch 1
    run = ctx.run

    # lr: auto ran its range test on the PEFT model first and the workers trained with its choice.
    test = json.loads(run.train.lr_range.read_text())
    assert test["steps_run"] <= 12 and len(test["lrs"]) == len(test["losses"]) == test["steps_run"]
    assert run.stage_info("train")["lr_auto"]["chosen"] == test["suggested_lr"]
    assert run.train.lr_range_plot.read_bytes()[:4] == b"\x89PNG"

    rows = [json.loads(x) for x in run.train.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["world_size"] == 2 for r in rows)
    assert 0 < rows[0]["lr"] <= test["suggested_lr"] * (1 + 1e-9)  # the schedule peaks at the chosen rate
    assert [r["attempt"] for r in rows] == [0, 1]  # epoch 1 ran after resuming, once

    checkpoints = [p for p in run.train.ray_storage.glob("*/checkpoint_*") if p.is_dir()]
    assert checkpoints
    for checkpoint in checkpoints:
        assert (checkpoint / PEFT_SETUP_FILE).is_file()
        keys = set(load_file(checkpoint / "model.safetensors"))
        # adapters on block 0, block 1 in full, the head: no frozen base weight
        assert keys and all(".lora_" in k or ".layers.1." in k or k.startswith("head.") for k in keys)
        assert any(".layers.0." in k for k in keys) and not any("base_layer" in k for k in keys)

    model, spec = load_classifier(run.train.model_dir)  # plain transformers names, no peft
    saved = load_file(run.train.model_dir / "model.safetensors")
    plain = build_classifier(cfg.model, spec["num_labels"]).state_dict()
    assert set(saved) == set(plain)
    torch.manual_seed(cfg.seed)  # the base every rank (and the driver) drew from the seed
    initial = build_classifier(cfg.model, spec["num_labels"]).state_dict()
    # frozen: identical to the seeded base; adapted block 0: base + merged update
    assert all(torch.equal(saved[k], initial[k]) for k in saved if k.startswith("backbone.embeddings."))
    q_proj = "backbone.layers.0.attention.q_proj"
    assert not torch.equal(saved[f"{q_proj}.weight"], initial[f"{q_proj}.weight"])
    assert torch.equal(saved[f"{q_proj}.bias"], initial[f"{q_proj}.bias"])  # LoRA adapts weights only
    assert run.stage_info("train")["predictions"]["val_test"][1] == 10  # logits from the merged model
    with torch.no_grad():
        assert model(pixel_values=torch.zeros(2, 1, 8, 8)).shape == (2, 10)
