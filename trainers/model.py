"""Backbone + head classifier, and saving / loading it as plain safetensors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from trainers.config import DEFAULT_VIEW_CROP_FRACTION, BackboneConfig, ModelConfig
from trainers.families import family_and_params
from trainers.views import IDENTITY_ONLY, apply_view, check_view_names, multi_view_logits

WEIGHTS_FILE = "model.safetensors"
CLASSIFIER_FILE = "classifier.json"
BACKBONE_CONFIG_DIR = "backbone"


def build_backbone(backbone: BackboneConfig, weights: bool = True) -> PreTrainedModel:
    """The backbone a run trains, built by its family (trainers/families) from the
    parameters the config's backbone section stands for: one path from family
    parameters to the module that trains. `weights=False`: the architecture alone (a
    pretrained directory's weights are not read)."""
    family, params = family_and_params(backbone)
    return drop_pooler(family.create_model(params, weights=weights))


def backbone_config(backbone: BackboneConfig) -> PretrainedConfig:
    family, params = family_and_params(backbone)
    return family.hf_config(params)


def backbone_skeleton(backbone: BackboneConfig) -> PreTrainedModel:
    """The backbone's modules on the meta device: names and shapes without memory or
    weights, so the driver can check a plan before any worker starts."""
    family, params = family_and_params(backbone)
    with torch.device("meta"):
        return drop_pooler(family.create_model(params, weights=False))


def drop_pooler(model: PreTrainedModel) -> PreTrainedModel:
    # We pool the hidden states ourselves. A built-in pooler would be a layer that gets
    # no gradient, which DDP reports as an error on every step.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def feature_width(config: PretrainedConfig) -> int:
    """Channels of the backbone's pooled feature: hidden_size for transformers, the last
    stage's width for convolutional networks (hidden_sizes)."""
    width = getattr(config, "hidden_size", None)
    if width is None and getattr(config, "hidden_sizes", None):
        width = config.hidden_sizes[-1]
    if width is None:
        raise ValueError(f"{type(config).__name__} names neither hidden_size nor hidden_sizes: the head's width is unknown")
    return int(width)


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
        hidden = feature_width(backbone.config)
        self.dropout = nn.Dropout(head_dropout)
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(hidden, head_hidden_dim), nn.GELU(), nn.Linear(head_hidden_dim, num_labels)
            )
        else:
            self.head = nn.Linear(hidden, num_labels)

    def pooled_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone(**inputs)
        hidden = outputs.last_hidden_state
        if hidden.ndim == 4:
            # A convolutional feature map (B, C, H, W) has no CLS token: its model's own
            # pooled output (the spatial mean, normalised by its final LayerNorm), so that
            # every parameter of the backbone gets a gradient (DDP requires it).
            pooled = getattr(outputs, "pooler_output", None)
            return pooled.flatten(1) if pooled is not None else hidden.mean(dim=(2, 3))
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

    def logits_and_features(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode logits `forward` gives, and the pooled feature they come from,
        in one pass: for several views, the mean of each view's pooled feature (through
        a linear head exactly the feature whose head output is the mean logits). Used
        for the feature map of a run, so the map shows the representation that made
        the exported predictions."""
        if self.training:
            raise RuntimeError("logits_and_features is for inference: call model.eval() first")
        if self.views == IDENTITY_ONLY:
            features = self.pooled_features(**inputs)
            return self.head(self.dropout(features)), features
        if "pixel_values" not in inputs:
            raise ValueError(f"views {list(self.views)} apply to images (pixel_values), got {sorted(inputs)}")
        pixel_values = inputs.pop("pixel_values")
        features_per_view, logits_per_view = [], []
        for name in self.views:
            features = self.pooled_features(
                pixel_values=apply_view(name, pixel_values, self.view_crop_fraction), **inputs
            )
            features_per_view.append(features)
            logits_per_view.append(self.head(self.dropout(features)))
        return torch.stack(logits_per_view).mean(dim=0), torch.stack(features_per_view).mean(dim=0)


def build_classifier(model_cfg: ModelConfig, num_labels: int, weights: bool = True) -> Classifier:
    """The classifier the config describes; `weights=False` for its architecture alone
    (built under `torch.device("meta")`, to count parameters and FLOPs for free)."""
    classifier = Classifier(
        build_backbone(model_cfg.backbone, weights),
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


# --- model.init_from: a saved model's backbone as this run's starting point -----------

BACKBONE_PREFIX = "backbone."
# Config keys that decide the backbone's architecture, named in a mismatch message.
ARCHITECTURE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "image_size", "patch_size", "num_channels", "vocab_size", "max_position_embeddings",
)


def saved_backbone_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Backbone tensor names and shapes of a saved classifier, read from the safetensors
    header (no weights loaded)."""
    with safe_open(str(model_dir / WEIGHTS_FILE), framework="pt") as saved:
        return {
            key.removeprefix(BACKBONE_PREFIX): tuple(saved.get_slice(key).get_shape())
            for key in saved.keys()
            if key.startswith(BACKBONE_PREFIX)
        }


def backbone_mismatch(backbone: BackboneConfig, model_dir: Path) -> str | None:
    """None when the saved classifier's backbone fits `backbone` tensor for tensor,
    else what differs (architecture keys first, then tensor names / shapes)."""
    source = AutoConfig.from_pretrained(model_dir / BACKBONE_CONFIG_DIR).to_dict()
    target = backbone_config(backbone).to_dict()
    differences = [
        f"{key} {source.get(key)!r} there, {target.get(key)!r} here"
        for key in ARCHITECTURE_KEYS
        if source.get(key) != target.get(key)
    ]
    if differences:
        return ", ".join(differences)
    saved = saved_backbone_shapes(model_dir)
    expected = {k: tuple(v.shape) for k, v in backbone_skeleton(backbone).state_dict().items()}
    wrong = sorted(k for k in saved.keys() & expected.keys() if saved[k] != expected[k])
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if not (wrong or missing or extra):
        return None
    parts = [f"{k} {saved[k]} there, {expected[k]} here" for k in wrong[:3]]
    parts += [f"missing tensors {missing[:3]}"] if missing else []
    parts += [f"unexpected tensors {extra[:3]}"] if extra else []
    return "; ".join(parts)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class InitBackbone:
    """model.init_from resolved on the driver: the source's saved model directory and
    the sha256 of its weights when this run started."""

    model_dir: str
    weights_sha256: str

    @classmethod
    def of(cls, model_dir: Path) -> InitBackbone:
        return cls(str(model_dir.resolve()), file_sha256(model_dir / WEIGHTS_FILE))


def load_backbone_weights(classifier: Classifier, init: InitBackbone) -> None:
    """Overwrite the classifier's backbone with a saved classifier's backbone (strict:
    every tensor, same shapes). The head is left as built: the source's label set may
    differ from this run's. Refuses weights that changed since the run started (the
    source retrained): a resumed PEFT run would get another frozen base."""
    weights = Path(init.model_dir) / WEIGHTS_FILE
    if file_sha256(weights) != init.weights_sha256:
        raise ValueError(
            f"model.init_from: {weights} changed since this run started (its source run was "
            "retrained); train this run again from the start"
        )
    state = load_file(str(weights))
    backbone_state = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    classifier.backbone.load_state_dict(backbone_state, strict=True)


def build_initial_classifier(model_cfg: ModelConfig, num_labels: int, init: InitBackbone | None) -> Classifier:
    """The classifier a run starts from: built from the config, then (model.init_from)
    the backbone replaced by the source run's selected weights."""
    classifier = build_classifier(model_cfg, num_labels)
    if init is not None:
        load_backbone_weights(classifier, init)
    return classifier
