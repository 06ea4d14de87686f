"""model.init_from without Ray: resolving the source run, refusing what cannot work,
and starting a classifier from a saved (PEFT-merged) backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ray_app.errors import UserError
from ray_app.runs import Run
from ray_app.stages.context import StageContext
from tests.helpers.configs import smoke_config
from trainers.adapters import PeftSetup, merge_adapters
from trainers.config import PeftConfig
from trainers.model import InitBackbone, build_classifier, build_initial_classifier, save_classifier

NUM_LABELS = 10  # the smoke config's digits


def _fake_run(root: Path, name: str, classifier: torch.nn.Module | None, cfg) -> Path:
    """A run directory as training leaves it: metadata.json and train/model/."""
    run = Run.under(root, name)
    run.root.mkdir(parents=True)
    run.metadata_path.write_text(json.dumps({"name": name, "stages": {}}))
    if classifier is not None:
        save_classifier(classifier, cfg.model, [str(i) for i in range(NUM_LABELS)], run.train.model_dir, extra={})
    return run.train.model_dir


def check_setup(cfg) -> None:
    StageContext.for_config(cfg).check()


def _pixels() -> torch.Tensor:
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _merged_peft_source(cfg) -> torch.nn.Module:
    """A PEFT classifier whose adapters moved away from zero, merged: the weights a PEFT
    run's train/model holds (unlike a freshly built one, the merge changes them)."""
    source = PeftSetup(cfg.model, PeftConfig(r=4), NUM_LABELS, seed=7).build()
    with torch.no_grad():
        for name, param in source.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    return merge_adapters(source).eval()


def test_new_run_starts_from_the_merged_backbone_of_a_peft_run(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    source = _merged_peft_source(cfg)
    _fake_run(tmp_path, "lora_source", source, cfg)
    target_cfg = smoke_config(tmp_path, "model.init_from=lora_source", "seed=1")
    init = StageContext.for_config(target_cfg).init_backbone
    assert init is not None
    model_dir = Path(init.model_dir)
    assert model_dir == Run.under(tmp_path, "lora_source").train.model_dir.resolve()

    torch.manual_seed(1)
    started = build_initial_classifier(target_cfg.model, NUM_LABELS, InitBackbone.of(model_dir)).eval()
    fresh_backbone = build_classifier(target_cfg.model, NUM_LABELS).backbone
    with torch.no_grad():
        # Backbone: the source's merged weights exactly, not this run's random ones.
        assert torch.equal(started.pooled_features(pixel_values=_pixels()), source.pooled_features(pixel_values=_pixels()))
        assert not torch.allclose(fresh_backbone(pixel_values=_pixels()).last_hidden_state,
                                  started.backbone(pixel_values=_pixels()).last_hidden_state)
        # Head: left as built (the label set may differ), so not the source's ...
        assert not torch.equal(started.head.weight, source.head.weight)
        # ... and with the source's head the logits are the source run's logits.
        started.head.load_state_dict(source.head.state_dict())
        assert torch.equal(started(pixel_values=_pixels()), source(pixel_values=_pixels()))


def test_peft_on_top_of_init_from_rebuilds_the_same_frozen_base(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    source = _merged_peft_source(cfg)
    model_dir = _fake_run(tmp_path, "src", source, cfg)
    setup = PeftSetup(cfg.model, PeftConfig(r=2), NUM_LABELS, seed=0, init_backbone=InitBackbone.of(model_dir))
    rebuilt = PeftSetup.from_json(setup.to_json())  # what a checkpoint stores
    assert rebuilt.init_backbone == setup.init_backbone
    first, second = setup.build(), rebuilt.build()
    with torch.no_grad():
        assert torch.equal(merge_adapters(first).pooled_features(pixel_values=_pixels()),
                           source.pooled_features(pixel_values=_pixels()))  # lora_B starts at zero
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), merge_adapters(second).state_dict().values(), strict=True))


def test_missing_run_is_a_user_error_listing_the_runs(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    _fake_run(tmp_path, "some_other_run", None, cfg)
    with pytest.raises(UserError) as info:
        check_setup(smoke_config(tmp_path, "model.init_from=nope"))
    assert info.value.exit_code == 2
    assert "model.init_from: no run named 'nope'" in str(info.value)
    assert "runs found: some_other_run" in str(info.value) and "--root" not in str(info.value)


def test_run_without_a_model_is_a_user_error(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    _fake_run(tmp_path, "untrained", None, cfg)
    with pytest.raises(UserError, match="model.init_from: run 'untrained' has no trained model .* train it first"):
        check_setup(smoke_config(tmp_path, "model.init_from=untrained"))


def test_run_with_a_different_backbone_names_what_differs(tmp_path: Path) -> None:
    wider = smoke_config(tmp_path, "model.backbone.config.hidden_size=64", "model.backbone.config.intermediate_size=96")
    _fake_run(tmp_path, "wide", build_classifier(wider.model, NUM_LABELS), wider)
    with pytest.raises(UserError) as info:
        check_setup(smoke_config(tmp_path, "model.init_from=wide"))
    message = str(info.value)
    assert "model.init_from: run 'wide' has a different backbone" in message
    assert "hidden_size 64 there, 32 here" in message and "intermediate_size 96 there, 64 here" in message
    with pytest.raises(UserError, match="model_type 'vit' there, 'dinov2' here"):
        check_setup(smoke_config(tmp_path, "model.init_from=wide", "model.backbone.config.model_type=dinov2"))


def test_a_run_cannot_start_from_itself(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "model.init_from=smoke_vit_baseline_s0")
    _fake_run(tmp_path, "smoke_vit_baseline_s0", build_classifier(cfg.model, NUM_LABELS), cfg)
    with pytest.raises(UserError, match="names this run itself"):
        check_setup(cfg)


def test_source_weights_that_changed_since_the_run_started_are_refused(tmp_path: Path) -> None:
    # A resumed PEFT run rebuilds its frozen base from the source: retrained, that
    # source would give another base under the same adapters.
    cfg = smoke_config(tmp_path)
    model_dir = _fake_run(tmp_path, "src", build_classifier(cfg.model, NUM_LABELS), cfg)
    init = InitBackbone.of(model_dir)
    torch.manual_seed(5)
    save_classifier(build_classifier(cfg.model, NUM_LABELS), cfg.model, [str(i) for i in range(NUM_LABELS)], model_dir, extra={})
    with pytest.raises(ValueError, match="changed since this run started"):
        build_initial_classifier(cfg.model, NUM_LABELS, init)
