"""The model, training and scaling sections on their own, as the training code takes them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.helpers.models import TINY_VIT
from trainers.config import ModelConfig, PreprocessingConfig, ScalingConfig, TrainingConfig
from trainers.families import BackboneConfig


def test_the_backbone_section_is_checked_by_its_family() -> None:
    assert BackboneConfig(config=TINY_VIT).config == TINY_VIT
    with pytest.raises(ValidationError, match="exactly one of model.backbone.id or model.backbone.config"):
        BackboneConfig(id="dir", config=TINY_VIT)
    with pytest.raises(ValidationError, match="needs a 'model_type' key"):
        BackboneConfig(config={"hidden_size": 32})
    with pytest.raises(ValidationError, match="hidden_size 33 is not a multiple of num_attention_heads 2"):
        BackboneConfig(config={**TINY_VIT, "hidden_size": 33})


def test_peft_settings_only_in_peft_mode_and_filled_in_there() -> None:
    assert TrainingConfig(mode="peft").peft is not None  # `-o training.mode=peft` alone works
    with pytest.raises(ValidationError, match="training.peft applies to training.mode: peft only"):
        TrainingConfig.model_validate({"mode": "baseline", "peft": {"r": 4}})
    with pytest.raises(ValidationError, match="use auto or a list of module names"):
        TrainingConfig.model_validate({"mode": "peft", "peft": {"target_modules": "q_proj"}})


def test_early_stopping_direction_follows_the_metric() -> None:
    assert TrainingConfig.model_validate({"early_stopping": {"metric": "loss"}}).early_stopping.mode == "min"
    assert TrainingConfig().early_stopping.mode == "max"


def test_model_section_rules() -> None:
    with pytest.raises(ValidationError, match="listed more than once"):
        ModelConfig.model_validate({"backbone": {"config": TINY_VIT}, "views": ["identity", "identity"]})
    with pytest.raises(ValidationError, match="set both image_mean and image_std"):
        PreprocessingConfig(image_mean=[0.5])
    with pytest.raises(ValidationError, match="image_std values must be > 0"):
        PreprocessingConfig(image_mean=[0.5], image_std=[0.0])
    with pytest.raises(ValidationError):
        ScalingConfig(num_workers=0)
