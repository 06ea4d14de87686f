"""The ConvNeXt family: a convolutional backbone whose output is a feature map, not tokens."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import model_cfg
from trainers.families import BackboneConfig, InvalidParams, family_and_params
from trainers.model import build_classifier

SMALL = {"model_type": "convnext", "image_size": 8, "patch_size": 1, "num_channels": 1, "num_stages": 2,
         "hidden_sizes": [16, 32], "depths": [1, 1]}


def test_variant_names_and_the_rules_between_parameters() -> None:
    family, params = family_and_params(BackboneConfig(config=SMALL))
    assert family.name == "convnext" and family.variant_name(params) == "convnext-w32-b2"
    assert family.describe(params)[:3] == ["Stages: 2", "Widths: [16, 32]", "Blocks: [1, 1]"]
    with pytest.raises(InvalidParams) as info:
        family.validate_params({**{k: v for k, v in SMALL.items() if k != "model_type"}, "hidden_sizes": [16],
                                "image_size": 6, "patch_size": 4})
    problems = "\n".join(info.value.problems)
    assert "hidden_sizes has 1 entries for num_stages 2" in problems
    assert "image_size 6 / patch_size 4 / 2^(num_stages - 1) = 0.75" in problems


def test_the_classifier_pools_the_feature_map_and_every_weight_learns() -> None:
    torch.manual_seed(0)
    model = build_classifier(model_cfg(backbone=SMALL, pooling="mean"), 3)
    assert model.head.in_features == 32  # the last stage's width
    pixels = torch.randn(4, 1, 8, 8)
    features = model.pooled_features(pixel_values=pixels)
    assert features.shape == (4, 32)
    model(pixel_values=pixels).sum().backward()
    # DDP needs a gradient for every parameter: the final LayerNorm is in the pooled path.
    assert all(p.grad is not None for p in model.parameters())


def test_pooling_cls_is_refused_for_a_feature_map() -> None:
    with pytest.raises(ValueError, match="pooling: cls needs a CLS token"):
        model_cfg(backbone=SMALL, pooling="cls")
    assert model_cfg(backbone=SMALL).pooling == "mean"  # left out: the config records what the model does
