"""Backbone + head classifier, and saving / loading it as plain safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from trainers.config import DEFAULT_VIEW_CROP_FRACTION, BackboneConfig, ModelConfig
from trainers.views import IDENTITY_ONLY, check_view_names, multi_view_logits

WEIGHTS_FILE = "model.safetensors"
CLASSIFIER_FILE = "classifier.json"
BACKBONE_CONFIG_DIR = "backbone"


def build_backbone(backbone: BackboneConfig) -> PreTrainedModel:
    if backbone.config is not None:
        kwargs = dict(backbone.config)
        model_type = kwargs.pop("model_type")
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs))
    else:
        model = AutoModel.from_pretrained(backbone.id)
    return drop_pooler(model)


def drop_pooler(model: PreTrainedModel) -> PreTrainedModel:
    # We pool the hidden states ourselves. A built-in pooler would be a layer that gets
    # no gradient, which DDP reports as an error on every step.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


class Classifier(nn.Module):
    """A Hugging Face encoder, a pooled feature (CLS token or masked mean) and a head.

    In eval mode the logits of an image batch are the mean over `views`
    (trainers/views.py); in train mode every forward is single-view, so training does
    not depend on the views."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        num_labels: int,
        head: str = "linear",
        head_hidden_dim: int = 256,
        head_dropout: float = 0.0,
        pooling: str = "cls",
        views: tuple[str, ...] = IDENTITY_ONLY,
        view_crop_fraction: float = DEFAULT_VIEW_CROP_FRACTION,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.views = check_view_names(views)
        self.view_crop_fraction = view_crop_fraction
        hidden = int(backbone.config.hidden_size)
        self.dropout = nn.Dropout(head_dropout)
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(hidden, head_hidden_dim), nn.GELU(), nn.Linear(head_hidden_dim, num_labels)
            )
        else:
            self.head = nn.Linear(hidden, num_labels)

    def pooled_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs.get("attention_mask")
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def single_view_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled_features(**inputs)))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.training or self.views == IDENTITY_ONLY:
            return self.single_view_logits(**inputs)
        if "pixel_values" not in inputs:
            # The config refuses views on text; a hand-built model must not get
            # identity logits while claiming to average views.
            raise ValueError(f"views {list(self.views)} apply to images (pixel_values), got {sorted(inputs)}")
        pixel_values = inputs.pop("pixel_values")
        return multi_view_logits(
            self.single_view_logits, pixel_values, self.views, self.view_crop_fraction, **inputs
        )


def build_classifier(model_cfg: ModelConfig, num_labels: int) -> Classifier:
    classifier = Classifier(
        build_backbone(model_cfg.backbone),
        num_labels=num_labels,
        head=model_cfg.head,
        head_hidden_dim=model_cfg.head_hidden_dim,
        head_dropout=model_cfg.head_dropout,
        pooling=model_cfg.pooling,
        views=tuple(model_cfg.views),
        view_crop_fraction=model_cfg.view_crop_fraction,
    )
    if model_cfg.freeze_backbone:
        classifier.backbone.requires_grad_(False)
    return classifier


def save_classifier(
    model: Classifier, model_cfg: ModelConfig, label_names: list[str], directory: Path, extra: dict[str, Any]
) -> None:
    """Weights as safetensors, the backbone's HF config, and what is needed to rebuild
    the classifier without the run's config (`classifier.json`)."""
    if not isinstance(model.backbone, PreTrainedModel):
        # A peft-wrapped backbone would save adapter names that load_classifier (and
        # the bundle and serving, which have no peft) cannot read.
        raise ValueError(
            f"save_classifier takes a plain transformers backbone, got {type(model.backbone).__name__}: "
            "merge the adapters first (trainers.adapters.merge_adapters)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    model.backbone.config.save_pretrained(directory / BACKBONE_CONFIG_DIR)
    spec = {
        "num_labels": len(label_names),
        "label_names": label_names,
        "head": model_cfg.head,
        "head_hidden_dim": model_cfg.head_hidden_dim,
        "pooling": model_cfg.pooling,
        "views": list(model_cfg.views),
        "view_crop_fraction": model_cfg.view_crop_fraction,
        **extra,
    }
    (directory / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def load_classifier(directory: Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a saved classifier from its own files (no pickle, no run config).
    A classifier.json written before views existed has none: it loads single-view."""
    spec = json.loads((directory / CLASSIFIER_FILE).read_text())
    backbone = drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(directory / BACKBONE_CONFIG_DIR)))
    try:
        views = check_view_names(spec.get("views", IDENTITY_ONLY))
    except ValueError as exc:
        raise ValueError(f"{directory / CLASSIFIER_FILE}: {exc}") from None
    model = Classifier(
        backbone,
        num_labels=spec["num_labels"],
        head=spec["head"],
        head_hidden_dim=spec["head_hidden_dim"],
        pooling=spec["pooling"],
        views=views,
        view_crop_fraction=float(spec.get("view_crop_fraction", DEFAULT_VIEW_CROP_FRACTION)),
    )
    load_model(model, str(directory / WEIGHTS_FILE))
    return model.eval(), spec
