"""Multi-view inference for image models (`model.views`): one definition for validation,
the exported val_calib / val_test logits and serving.

A view is a fixed, deterministic transform of a normalised (B, C, H, W) pixel batch:
the image itself, its mirror image, or a crop of `crop_fraction` of each side (centre
or one corner) resized back to (H, W), because the backbone takes one fixed size. The
classifier's logits are averaged over the views in logit space (the mean of the
logits, not of the probabilities). `Classifier.forward` calls `multi_view_logits` in
eval mode only, and the views are saved in classifier.json, so every path that loads
a saved classifier (batch prediction, the bundle, serving) applies the same views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import torch
import torch.nn.functional as F

from trainers.config import DEFAULT_VIEW_CROP_FRACTION, ViewName

VIEW_NAMES: tuple[str, ...] = get_args(ViewName)
IDENTITY_ONLY: tuple[str, ...] = ("identity",)

# Where each crop view's window sits: (vertical, horizontal) anchor, 0 = top / left,
# 1 = bottom / right, 0.5 = centred.
CROP_ANCHORS: dict[str, tuple[float, float]] = {
    "center_crop": (0.5, 0.5),
    "top_left": (0.0, 0.0),
    "top_right": (0.0, 1.0),
    "bottom_left": (1.0, 0.0),
    "bottom_right": (1.0, 1.0),
}


def check_view_names(views: Sequence[str]) -> tuple[str, ...]:
    """`views` as a tuple, or a ValueError naming what is wrong with it (for a saved
    classifier.json, whose views never went through the config's validation)."""
    unknown = [name for name in views if name not in VIEW_NAMES]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; known views: {list(VIEW_NAMES)}")
    if not views:
        raise ValueError("views must name at least one view, e.g. ['identity']")
    if len(set(views)) != len(views):
        raise ValueError(f"views must not repeat a view (got {list(views)})")
    return tuple(views)


def crop_window(height: int, width: int, fraction: float, anchor: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of a crop of `fraction` of each side,
    rounded to the nearest pixel and at least one; a centred window's odd leftover
    pixel goes to the bottom / right (the offset is floored)."""
    crop_h = max(1, min(height, int(fraction * height + 0.5)))
    crop_w = max(1, min(width, int(fraction * width + 0.5)))
    return int((height - crop_h) * anchor[0]), int((width - crop_w) * anchor[1]), crop_h, crop_w


def crop_and_resize(pixels: torch.Tensor, fraction: float, anchor: tuple[float, float]) -> torch.Tensor:
    """The crop window of a (B, C, H, W) batch, resized back to (H, W) bilinearly."""
    height, width = pixels.shape[-2:]
    top, left, crop_h, crop_w = crop_window(height, width, fraction, anchor)
    window = pixels[..., top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return window
    return F.interpolate(window, size=(height, width), mode="bilinear", align_corners=False)


def apply_view(name: str, pixels: torch.Tensor, crop_fraction: float = DEFAULT_VIEW_CROP_FRACTION) -> torch.Tensor:
    """One view of a normalised (B, C, H, W) pixel batch, the same shape."""
    if name == "identity":
        return pixels
    if name == "hflip":
        return pixels.flip(-1)
    if name in CROP_ANCHORS:
        return crop_and_resize(pixels, crop_fraction, CROP_ANCHORS[name])
    raise ValueError(f"unknown view '{name}'; known views: {list(VIEW_NAMES)}")


def multi_view_logits(
    single_view: Callable[..., torch.Tensor],
    pixel_values: torch.Tensor,
    views: Sequence[str],
    crop_fraction: float = DEFAULT_VIEW_CROP_FRACTION,
    **other_inputs: torch.Tensor,
) -> torch.Tensor:
    """Mean over `views` of `single_view(pixel_values=view, **other_inputs)`. One
    forward per view at the caller's batch size, so memory stays that of one view."""
    per_view = [
        single_view(pixel_values=apply_view(name, pixel_values, crop_fraction), **other_inputs) for name in views
    ]
    if len(per_view) == 1:
        return per_view[0]
    return torch.stack(per_view).mean(dim=0)
