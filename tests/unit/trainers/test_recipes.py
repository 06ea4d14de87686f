"""Which recipe a config gets, what it fills in, and that a value the config gives wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_app.config import AppConfig, validate_config
from tests.helpers.configs import REPO
from tests.helpers.models import TINY_BERT, TINY_VIT


def _pretrained_dir(tmp_path: Path, model_type: str = "bert") -> str:
    backbone = tmp_path / f"pretrained-{model_type}"
    backbone.mkdir(exist_ok=True)
    (backbone / "config.json").write_text(f'{{"model_type": "{model_type}", "hidden_size": 32}}')
    return str(backbone)


def _config(tmp_path: Path, *, modality: str = "text", pretrained: bool = True, training: dict[str, Any] | None = None,
            model: dict[str, Any] | None = None) -> AppConfig:
    source = ({"kind": "csv", "path": str(tmp_path / "data.csv")} if modality == "text"
              else {"kind": "image_folder", "path": str(tmp_path)})
    if pretrained:
        backbone: dict[str, Any] = {"id": _pretrained_dir(tmp_path, "bert" if modality == "text" else "vit")}
    else:
        backbone = {"config": TINY_BERT if modality == "text" else TINY_VIT}
    preprocessing = {"tokenizer": str(tmp_path)} if modality == "text" and not pretrained else {}
    return validate_config({
        "data": {"source": source},
        "model": {"backbone": backbone, "preprocessing": preprocessing, **(model or {})},
        "training": training or {},
    })


def test_each_situation_gets_its_recipe(tmp_path: Path) -> None:
    scratch = _config(tmp_path, pretrained=False)
    finetune = _config(tmp_path)
    peft = _config(tmp_path, training={"mode": "peft"})
    probe = _config(tmp_path, model={"freeze_backbone": True})
    assert [c.training.recipe for c in (scratch, finetune, peft, probe)] == ["scratch", "finetune", "peft", "probe"]
    # Fine-tuning a pretrained encoder: a small rate decaying towards the embeddings, a faster head.
    assert (finetune.training.lr, finetune.training.layer_decay, finetune.training.head_lr_scale) == (5e-5, 0.8, 10.0)
    assert finetune.training.early_stopping.patience == 3 and finetune.training.label_smoothing == 0.1
    # Random weights learn with a large rate over many epochs; adapters with a larger one than full fine-tuning.
    assert scratch.training.lr == 1e-3 and scratch.training.epochs == 30 and scratch.training.layer_decay == 1.0
    assert peft.training.lr > finetune.training.lr and peft.training.layer_decay == 1.0
    assert probe.training.label_smoothing == 0.0


def test_a_value_the_config_gives_wins_over_the_recipe(tmp_path: Path) -> None:
    cfg = _config(tmp_path, training={"lr": 3e-4, "label_smoothing": 0.0, "early_stopping": {"patience": 7}})
    assert cfg.training.recipe == "finetune"
    assert (cfg.training.lr, cfg.training.label_smoothing, cfg.training.early_stopping.patience) == (3e-4, 0.0, 7)
    assert cfg.training.layer_decay == 0.8  # what it left out still comes from the recipe
    named = _config(tmp_path, pretrained=False, training={"recipe": "finetune"})
    assert named.training.recipe == "finetune" and named.training.lr == 5e-5  # a named recipe, not auto's choice


def test_the_resolved_config_records_the_recipe_and_reloads_unchanged(tmp_path: Path) -> None:
    cfg = _config(tmp_path, training={"mode": "peft"})
    resolved = cfg.resolved_dict()
    assert resolved["training"]["recipe"] == "peft" and resolved["training"]["lr"] == 1e-3
    again = AppConfig.model_validate(resolved)
    assert again.resolved_dict() == resolved
    assert again.fingerprint("training") == cfg.fingerprint("training")


def test_image_augmentation_follows_the_image_size_and_the_views(tmp_path: Path) -> None:
    small = _config(tmp_path, modality="image", pretrained=False)  # 8-px images: gentle crops
    assert small.training.augment.crop_scale == 0.8 and small.training.augment.hflip is False
    large = _config(tmp_path, modality="image")  # a pretrained image model: 224 px or so
    assert large.training.augment.crop_scale == 0.6 and large.training.augment.hflip is False
    mirrored = _config(tmp_path, modality="image", model={"views": ["identity", "hflip"]})
    assert mirrored.training.augment.hflip is True  # flips only where the views say mirroring is harmless
    text = _config(tmp_path)
    assert not text.training.augment.enabled


def test_augmentation_that_contradicts_the_data_is_refused(tmp_path: Path) -> None:
    from ray_app.errors import ConfigError

    with pytest.raises(ConfigError, match="model.views has no hflip"):
        _config(tmp_path, modality="image", training={"augment": {"hflip": True}})
    with pytest.raises(ConfigError, match="the data is text"):
        _config(tmp_path, training={"augment": {"jitter": 0.2}})


def test_the_default_preset_is_a_convnext_trained_from_scratch() -> None:
    from ray_app.config import load_config
    from trainers.families import family_of

    cfg = load_config(REPO / "configs" / "digits.yaml")
    assert family_of(cfg.model.backbone).name == "convnext"
    assert cfg.training.recipe == "scratch" and cfg.training.lr == 0.004  # the preset's own rate wins
    assert cfg.training.label_smoothing == 0.1 and cfg.training.augment.crop_scale == 0.8


def test_lr_auto_is_accepted_and_a_non_positive_rate_is_not(tmp_path: Path) -> None:
    from ray_app.errors import ConfigError

    cfg = _config(tmp_path, training={"lr": "auto"})
    assert cfg.training.lr == "auto"
    with pytest.raises(ValueError, match="run the range test first"):
        cfg.training.peak_lr()
    assert cfg.training.with_lr(2e-4).peak_lr() == 2e-4
    with pytest.raises(ConfigError, match="training.lr: Input should be greater than 0, or auto"):
        _config(tmp_path, training={"lr": 0})
