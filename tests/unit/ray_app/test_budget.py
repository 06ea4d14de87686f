"""Sizing a run without Ray: counting on the model's architecture, timing where the run
trains, and never stalling on a model too large for a CPU."""

from __future__ import annotations

import pytest

from ray_app import budget
from tests.helpers.configs import smoke_config

VIT_B16 = ["model.backbone.config.image_size=224", "model.backbone.config.patch_size=16",
           "model.backbone.config.num_channels=3", "model.backbone.config.hidden_size=768",
           "model.backbone.config.num_hidden_layers=12", "model.backbone.config.num_attention_heads=12",
           "model.backbone.config.intermediate_size=3072"]


@pytest.mark.parametrize("mode", [[], ["training.mode=peft", "training.peft.unfreeze_last_blocks=1"]])
def test_the_architecture_counts_what_the_real_model_has(tmp_path, mode) -> None:
    cfg = smoke_config(tmp_path, *mode)
    real, meta = budget.build_model(cfg, 10), budget.build_model(cfg, 10, on_meta=True)
    assert next(meta.parameters()).device.type == "meta"
    for count in (lambda m: sum(p.numel() for p in m.parameters()),
                  lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)):
        assert count(meta) == count(real)
    flops = budget.model_flops(meta, budget.synthetic_batch(cfg, 2, 10, "meta"))
    assert flops == pytest.approx(budget.model_flops(real, budget.synthetic_batch(cfg, 2, 10)), rel=0.02)


def test_a_gpu_config_on_a_machine_without_one_is_estimated_from_flops(tmp_path) -> None:
    cfg = smoke_config(tmp_path, *VIT_B16, "scaling.use_gpu=true", "training.batch_size=128",
                       "budget.gpu_tflops=400")
    assert budget.timing(cfg) == "estimated"  # this machine has no GPU
    model = budget.build_model(cfg, 10, on_meta=True)  # 86 M parameters, no memory
    assert sum(p.numel() for p in model.parameters()) == 85_798_656 + 768 * 10 + 10  # ViT-B/16 without pooler + head
    per_sample = budget.model_flops(model, budget.synthetic_batch(cfg, 1, 10, "meta"))
    assert 100e9 < per_sample["forward"] + per_sample["backward"] < 110e9  # ~106 GFLOP per ViT-B/16 sample
    bench = budget.estimated_steps(per_sample, cfg)
    assert bench["step_seconds_median"] == pytest.approx(
        (per_sample["forward"] + per_sample["backward"]) * 128 / 400e12)
    assert bench["steps"] == 0 and "estimated from FLOPs at 400 TFLOP/s" in bench["method"]
    assert "estimated from FLOPs" in budget._step_line(bench)


def test_a_cpu_benchmark_too_long_for_its_bound_is_timed_on_fewer_samples(tmp_path) -> None:
    cfg = smoke_config(tmp_path, "training.batch_size=16")
    full = budget.benchmark_steps(budget.build_model(cfg, 10), cfg, 10)
    assert (full["batch_size"], full["steps"], full["method"]) == (16, cfg.budget.benchmark_steps, "measured")
    bounded = smoke_config(tmp_path, "training.batch_size=16", "budget.max_probe_seconds=0.000001")
    probe = budget.benchmark_steps(budget.build_model(bounded, 10), bounded, 10)
    # not even one sample fits the bound: the single warm probe step is the measurement
    assert (probe["batch_size"], probe["steps"], probe["warmup_steps"]) == (1, 1, 0)
    assert probe["method"] == "measured on batch 1, scaled to 16"
    assert probe["step_seconds_median"] == pytest.approx(probe["step_seconds"][0] * 16, rel=1e-2)  # rounded to 10 µs
