"""Tiny backbones (2 layers, hidden 32) and images for unit tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

TINY_VIT = {
    "model_type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1,
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
}
TINY_BERT = {
    "model_type": "bert", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32,
}


def model_cfg(**kw: Any) -> Any:
    """A ModelConfig on TINY_VIT (or `backbone=`), other fields as given."""
    from trainers.config import ModelConfig

    return ModelConfig.model_validate({"backbone": {"config": kw.pop("backbone", TINY_VIT)}, **kw})


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
