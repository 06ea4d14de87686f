"""What the optimizer and the loss of a training step are made of, shared by the training
loop, the learning-rate range test and the benchmarks: AdamW's parameter groups (weight
decay, the head's rate, layer-wise lr decay) and the training loss (label smoothing)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from trainers.adapters import PeftSetupError, find_encoder_blocks
from trainers.config import TrainingConfig

logger = logging.getLogger(__name__)


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr: float | None = None, head_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices, not biases or norm scales (the usual AdamW recipe).
    With `lr`, each group also carries its own rate: the head's `lr x head_lr_scale`, the
    backbone's `lr x layer_decay^(depth from the top)` (`layer_depths`)."""
    if lr is None:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if _no_weight_decay(name, param) else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    depths, top = layer_depths(model) if layer_decay < 1.0 else ({}, 0)
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if not name.startswith("backbone."):
            scale = head_lr_scale
        else:
            scale = layer_decay ** (top - depths.get(name, top))
        groups.setdefault((_no_weight_decay(name, param), scale), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale}
            for (no_decay, scale), params in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))]


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim < 2 or name.endswith(".bias")


def layer_depths(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """Each backbone parameter's depth for layer-wise lr decay, and the top depth: the
    embeddings 0, encoder block i at i + 1, what follows the blocks (a final norm) at
    the top, L + 1. A backbone without transformer blocks (a convolutional one) is one
    layer at the top: no decay."""
    backbone = model.backbone  # type: ignore[attr-defined]
    try:
        blocks = find_encoder_blocks(backbone)
    except PeftSetupError:
        logger.warning(f"layer_decay: {type(backbone).__name__} has no transformer blocks; one lr for the backbone")
        return {}, 0
    top = blocks.count + 1
    depths: dict[str, int] = {}
    for name, _ in backbone.named_parameters():
        full = f"backbone.{name}"
        if name.startswith(f"{blocks.path}."):
            depths[full] = int(name[len(blocks.path) + 1 :].split(".", 1)[0]) + 1
        else:
            depths[full] = 0 if "embed" in name else top
    return depths, top


def training_loss(logits: torch.Tensor, target: torch.Tensor, training: TrainingConfig) -> torch.Tensor:
    return F.cross_entropy(logits, target, label_smoothing=training.label_smoothing)
