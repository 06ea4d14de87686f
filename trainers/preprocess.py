"""Turning split rows into model inputs: one definition for training, prediction and
serving, so the three can never drift apart.

Images: decode -> the backbone's channel count -> resize, kept as uint8 through Ray Data,
the object store and the worker (a 224x224x3 image is 150 KB as uint8, 602 KB as
float32); `model_inputs` then scales them to [0, 1] and normalises by mean/std on the
device the model runs on. Serving normalises on the CPU (`decode_image`,
`normalize_pixels`): the same arithmetic, so the same logits. Text: the backbone's
tokenizer, padded/truncated to max_length.
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainers.config import ModelConfig

LABEL_KEY = "labels"


@dataclass(frozen=True)
class ImageSpec:
    image_size: int
    num_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", **asdict(self)}


@dataclass(frozen=True)
class TextSpec:
    tokenizer: str
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}


def _backbone_config(model_cfg: ModelConfig) -> dict[str, Any]:
    if model_cfg.backbone.config is not None:
        return dict(model_cfg.backbone.config)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_cfg.backbone.id).to_dict()


def _image_processor_values(model_cfg: ModelConfig) -> dict[str, Any]:
    """Size / mean / std from the backbone's own image processor, when it has one."""
    if model_cfg.backbone.id is None:
        return {}
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_cfg.backbone.id)
    except (OSError, ValueError):
        return {}
    # The model sees the crop when the processor crops (DINOv2: resize 256, crop 224).
    cropped = getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None)
    side = _side_length(cropped or getattr(processor, "size", None))
    return {
        "image_size": side,
        "mean": getattr(processor, "image_mean", None),
        "std": getattr(processor, "image_std", None),
    }


def _side_length(size: Any) -> int | None:
    """An image processor's size: an int, a dict, or (transformers 5) a SizeDict."""
    if size is None or isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return get("height") or get("shortest_edge")


def resolve_image_spec(model_cfg: ModelConfig) -> ImageSpec:
    """Config first, then the image processor, then the backbone config, then 0.5/0.5."""
    pre = model_cfg.preprocessing
    backbone = _backbone_config(model_cfg)
    processor = _image_processor_values(model_cfg)
    channels = int(backbone.get("num_channels", 3))
    size = pre.image_size or processor.get("image_size") or backbone.get("image_size")
    if not size:
        raise ValueError(
            "cannot tell the image size: set model.preprocessing.image_size or "
            "image_size in model.backbone.config"
        )
    mean = pre.image_mean or processor.get("mean") or [0.5] * channels
    std = pre.image_std or processor.get("std") or [0.5] * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"image mean/std have {len(mean)}/{len(std)} values but the backbone takes "
            f"{channels} channel(s)"
        )
    return ImageSpec(int(size), channels, tuple(float(m) for m in mean), tuple(float(s) for s in std))


def resolve_text_spec(model_cfg: ModelConfig) -> TextSpec:
    """The tokenizer directory (made absolute: workers and the bundle export must find
    it whatever their current directory) and the sequence length."""
    configured = model_cfg.preprocessing.tokenizer
    tokenizer = configured or model_cfg.backbone.id
    if tokenizer is None:
        raise ValueError("text needs model.preprocessing.tokenizer or a backbone id")
    local = Path(tokenizer)
    if local.is_dir():
        tokenizer = str(local.resolve())
    elif configured is not None:
        raise ValueError(
            f"model.preprocessing.tokenizer '{configured}' is not a directory (relative paths "
            f"are resolved from the current directory, {Path.cwd()})"
        )
    return TextSpec(tokenizer=str(tokenizer), max_length=model_cfg.preprocessing.max_length)


def load_tokenizer(spec: TextSpec) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(spec.tokenizer))


def check_text_backbone_fits(model_cfg: ModelConfig, spec: TextSpec) -> None:
    """Refuse a tokenizer / backbone pair that would fail inside a worker with an index
    error: token ids past the embedding table, or sequences longer than the positions."""
    from trainers.model import (
        backbone_config,  # torch and transformers: only when checking text
    )

    try:
        tokenizer = load_tokenizer(spec)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # transformers' messages span several lines
        raise ValueError(
            f"cannot load a tokenizer from '{spec.tokenizer}' ({reason}); it needs "
            "tokenizer_config.json and the vocabulary (e.g. vocab.txt) or tokenizer.json"
        ) from None
    backbone = backbone_config(model_cfg.backbone)
    vocab_size = getattr(backbone, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer at '{spec.tokenizer}' has {len(tokenizer)} tokens but the backbone's "
            f"vocab_size is {vocab_size}: ids from {vocab_size} on have no embedding; set "
            f"vocab_size to at least {len(tokenizer)}"
        )
    positions = getattr(backbone, "max_position_embeddings", None)
    if positions is not None and spec.max_length > positions:
        raise ValueError(
            f"model.preprocessing.max_length is {spec.max_length} but the backbone has "
            f"max_position_embeddings={positions}: lower max_length or raise the positions"
        )


def decode_pixels(content: bytes, spec: ImageSpec) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, C) in the backbone's channel count and size."""
    with Image.open(io.BytesIO(content)) as image:
        image = image.convert("L" if spec.num_channels == 1 else "RGB")
        if image.size != (spec.image_size, spec.image_size):
            image = image.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_image(content: bytes, spec: ImageSpec) -> np.ndarray:
    """Encoded bytes -> float32 (C, H, W), resized and normalised (serving's path)."""
    return normalize_pixels(decode_pixels(content, spec), spec)


def normalize_pixels(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Pixel values 0..255 as (H, W) or (H, W, C) -> float32 (C, H, W) scaled to [0, 1]
    and normalised by mean/std. Decoded images and raw pixel arrays (serving) both end
    here, so the two can never be normalised differently."""
    pixels = np.asarray(pixels, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def preprocess_image_batch(
    batch: dict[str, np.ndarray], spec: ImageSpec, keep: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: split rows -> {pixel_values (uint8, N x C x H x W),
    labels, *keep}; `model_inputs` normalises the pixels where the model runs."""
    pixel_values = np.stack([decode_pixels(bytes(c), spec).transpose(2, 0, 1) for c in batch["image"]])
    return {
        "pixel_values": pixel_values,
        LABEL_KEY: batch["label_id"].astype(np.int64),
        **{k: batch[k] for k in keep},
    }


@functools.lru_cache(maxsize=4)
def cached_tokenizer(spec: TextSpec) -> Any:
    """One tokenizer per process and spec: Ray reuses its worker processes across
    tasks, so a worker loads it once, not once per batch."""
    return load_tokenizer(spec)


def tokenize_batch(
    tokenizer: Any, batch: dict[str, np.ndarray], spec: TextSpec, keep: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Split rows -> {input_ids, attention_mask, labels, *keep}, padded / truncated to
    spec.max_length."""
    encoded = tokenizer(
        [str(t) for t in batch["text"]],
        padding="max_length",
        truncation=True,
        max_length=spec.max_length,
        return_tensors="np",
    )
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
        LABEL_KEY: batch["label_id"].astype(np.int64),
        **{k: batch[k] for k in keep},
    }


def preprocess_text_batch(
    batch: dict[str, np.ndarray], spec: TextSpec, keep: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function for text (a task, like images: an actor pool would
    start a fresh process per dataset, and hold a CPU that the batch-inference actor
    after it needs on a small local Ray)."""
    return tokenize_batch(cached_tokenizer(spec), batch, spec, keep)


MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask")


def model_inputs(batch: dict[str, Any], spec: ImageSpec | TextSpec | None = None) -> dict[str, Any]:
    """The keyword arguments for Classifier.forward from a preprocessed batch of
    tensors: uint8 pixels are scaled and normalised by `spec` here, on the device the
    batch is on (so a GPU does it, and only uint8 crosses the bus)."""
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    pixels = inputs.get("pixel_values")
    if pixels is not None and str(pixels.dtype) == "torch.uint8":
        if not isinstance(spec, ImageSpec):
            raise ValueError("uint8 pixel_values need the ImageSpec that normalises them")
        inputs["pixel_values"] = normalize_pixel_tensor(pixels, spec)
    return inputs


def normalize_pixel_tensor(pixels: Any, spec: ImageSpec) -> Any:
    """uint8 (N, C, H, W) torch pixels -> float32 scaled to [0, 1] and normalised by
    mean/std: `normalize_pixels`' arithmetic, on the tensor's own device."""
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def preprocess_dataset(ds: Any, spec: ImageSpec | TextSpec, keep: tuple[str, ...] = ()) -> Any:
    """Attach the preprocessing step to a Ray Dataset of split rows (lazy, streamed).
    Columns named in `keep` pass through unchanged."""
    preprocess = preprocess_image_batch if isinstance(spec, ImageSpec) else preprocess_text_batch
    return ds.map_batches(preprocess, fn_kwargs={"spec": spec, "keep": keep}, batch_format="numpy")
