"""Train-time image augmentation (`training.augment`), on the device the model runs on.

A whole batch is transformed at once: one affine grid per sample (a random resized
crop, mirrored for a flip) sampled bilinearly, then a brightness / contrast jitter. The
pixels are the normalised float batch `model_inputs` returns, so uint8 stays uint8 up
to the device. Only training steps call it (`training_inputs`: the training loop, the
learning-rate range test); validation, the exported logits and serving read the rows as
they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainers.config import AugmentConfig
from trainers.preprocess import ImageSpec, TextSpec, model_inputs

# Random resized crops keep an aspect ratio within these bounds (torchvision's default).
ASPECT_RANGE = (3 / 4, 4 / 3)


def training_inputs(batch: dict[str, torch.Tensor], spec: ImageSpec | TextSpec | None, augment: AugmentConfig,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for a training step: `model_inputs`, images then
    augmented (text passes through)."""
    inputs = model_inputs(batch, spec)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = augment_pixels(inputs["pixel_values"], augment, generator)
    return inputs


def augment_pixels(pixels: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly augmented copy of a normalised (B, C, H, W) batch. Random numbers come
    from `generator` (on the CPU, seeded per epoch) so a run is reproducible."""
    if not augment.enabled:
        return pixels
    count = pixels.shape[0]
    if augment.crop_scale is not None or augment.hflip:
        theta = _crop_and_flip_theta(count, augment, generator).to(pixels.device, pixels.dtype)
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if augment.jitter > 0:
        pixels = _jitter(pixels, augment.jitter, generator)
    return pixels


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _crop_and_flip_theta(count: int, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(count, 2, 3) affine matrices mapping output coordinates into the source image
    ([-1, 1] on each axis): a window of the drawn area and aspect at a drawn place."""
    width = torch.ones(count)
    height = torch.ones(count)
    if augment.crop_scale is not None:
        area = _uniform(count, augment.crop_scale, 1.0, generator)
        log_aspect = _uniform(count, math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]), generator)
        aspect = torch.exp(log_aspect)
        width = torch.sqrt(area * aspect).clamp(max=1.0)
        height = torch.sqrt(area / aspect).clamp(max=1.0)
    # The window's centre may move as far as keeps the window inside the image.
    centre_x = (1 - width) * _uniform(count, -1.0, 1.0, generator)
    centre_y = (1 - height) * _uniform(count, -1.0, 1.0, generator)
    flip = torch.ones(count)
    if augment.hflip:
        flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    return theta


def _jitter(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    count = pixels.shape[0]
    shape = (count, 1, 1, 1)
    brightness = _uniform(count, -strength, strength, generator).view(shape).to(pixels.device, pixels.dtype)
    contrast = _uniform(count, 1 - strength, 1 + strength, generator).view(shape).to(pixels.device, pixels.dtype)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    return (pixels - mean) * contrast + mean + brightness
