"""Train-time augmentation: what it does to a batch, and that only training sees it —
validation (and so checkpoint choice) reads val_select rows as they are."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from transformers import get_cosine_schedule_with_warmup

from trainers.augment import augment_pixels
from trainers.config import AugmentConfig, TrainingConfig
from trainers.preprocess import ImageSpec, normalize_pixel_tensor
from trainers.train_loop import TrainShardCache, ValidationCache, Worker, train_epoch, validate

SPEC = ImageSpec(image_size=8, num_channels=1, mean=(0.5,), std=(0.5,))


def _ramp(count: int = 4) -> torch.Tensor:
    """(count, 1, 8, 8) images whose pixels differ everywhere (a left-to-right ramp plus rows)."""
    row = torch.linspace(-1, 1, 8)
    image = row[None, :] + 0.1 * torch.arange(8.0)[:, None]
    return image.expand(count, 1, 8, 8).clone()


def test_off_means_untouched_and_on_is_reproducible() -> None:
    pixels = _ramp()
    assert augment_pixels(pixels, AugmentConfig(), torch.Generator().manual_seed(0)) is pixels
    augment = AugmentConfig(crop_scale=0.5, jitter=0.2)
    first = augment_pixels(pixels, augment, torch.Generator().manual_seed(1))
    again = augment_pixels(pixels, augment, torch.Generator().manual_seed(1))
    other = augment_pixels(pixels, augment, torch.Generator().manual_seed(2))
    assert first.shape == pixels.shape and torch.equal(first, again)
    assert not torch.allclose(first, pixels) and not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # drawn per sample, not once per batch


def test_a_flip_alone_mirrors_some_images_and_leaves_the_rest() -> None:
    pixels = _ramp(32)
    flipped = augment_pixels(pixels, AugmentConfig(hflip=True), torch.Generator().manual_seed(0))
    mirrored = [torch.allclose(out, image.flip(-1), atol=1e-5) for out, image in zip(flipped, pixels, strict=True)]
    kept = [torch.allclose(out, image, atol=1e-5) for out, image in zip(flipped, pixels, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 4 < sum(mirrored) < 28


class _Rows:
    """A Ray Data stand-in: uint8 images whose every pixel is the row's index."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count

    def iter_torch_batches(self, batch_size: int, **_: Any) -> Any:
        for start in range(self.first, self.first + self.count, batch_size):
            index = torch.arange(start, min(start + batch_size, self.first + self.count))
            yield {"labels": index % 2, "pixel_values": index.to(torch.uint8)[:, None, None, None].expand(-1, 1, 8, 8)}


class _Recorder(torch.nn.Module):
    """A classifier that keeps every pixel batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixel_values.detach().clone())
        return self.linear(pixel_values.flatten(1))


def test_training_batches_are_augmented_and_validation_batches_never_are() -> None:
    training = TrainingConfig.model_validate({"epochs": 1, "batch_size": 4, "eval_batch_size": 4,
                                              "augment": {"crop_scale": 0.5, "jitter": 0.3}})
    model = _Recorder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    worker = Worker(
        params=SimpleNamespace(training=training, model=SimpleNamespace(freeze_backbone=False), seed=0,  # type: ignore[arg-type]
                               input_spec=SPEC),
        rank=0, world=1, device=torch.device("cpu"), dtype=None, model=model, ddp_model=model,  # type: ignore[arg-type]
        optimizer=optimizer, scheduler=get_cosine_schedule_with_warmup(optimizer, 0, 10), ema_model=None,
        scaler=torch.amp.GradScaler("cpu", enabled=False), peft_setup=None, state={},
        train_shard=_Rows(0, 8), train_cache=TrainShardCache(0), val_select=_Rows(100, 8),
        val_cache=ValidationCache(0), progress=None,
    )
    train_epoch(worker, 0)
    trained = torch.cat(model.seen)
    model.seen.clear()
    validate(worker)
    validated = torch.cat(model.seen)
    rows = torch.arange(100, 108).to(torch.uint8)[:, None, None, None].expand(-1, 1, 8, 8)
    assert torch.equal(validated, normalize_pixel_tensor(rows, SPEC))  # exactly the val_select rows
    originals = normalize_pixel_tensor(torch.arange(0, 8).to(torch.uint8)[:, None, None, None].expand(-1, 1, 8, 8), SPEC)
    changed = [not any(torch.allclose(image, original) for original in originals) for image in trained]
    assert len(trained) == 8 and all(changed)  # every training image was altered
