"""The learning-rate range test (training.lr: auto) on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.models import model_cfg
from trainers.config import TrainingConfig
from trainers.lr_range import lr_schedule, plot_lr_range, run_lr_range_test, suggest_lr
from trainers.model import build_classifier
from trainers.preprocess import ImageSpec

SPEC = ImageSpec(image_size=8, num_channels=1, mean=(0.5,), std=(0.5,))


def _batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Two classes told apart by brightness: learnable in a few steps at the right rate."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 2, (16,), generator=generator)
        noise = torch.randint(0, 60, (16, 1, 8, 8), generator=generator)
        pixels = (labels[:, None, None, None] * 150 + noise).to(torch.uint8)
        batches.append({"labels": labels, "pixel_values": pixels})
    return batches


def test_the_schedule_is_geometric() -> None:
    rates = lr_schedule(1e-6, 1.0, 7)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log10(rates)), 1.0)


def test_the_suggestion_is_where_the_loss_falls_fastest() -> None:
    rates = lr_schedule(1e-5, 1.0, 50)
    # Flat, then a steep fall centred at 1e-2, then a blow-up.
    losses = [2.0 - 1.5 / (1 + np.exp(-4 * (np.log10(r) + 2))) + (5.0 if r > 0.3 else 0.0) for r in rates]
    assert suggest_lr(rates, losses) == pytest.approx(1e-2, rel=0.3)
    with pytest.raises(ValueError, match="too few"):
        suggest_lr(rates[:3], losses[:3])


def test_a_range_test_on_a_tiny_model_picks_a_rate_that_trains_it(tmp_path: Path) -> None:
    training = TrainingConfig.model_validate({"lr": "auto", "batch_size": 16})
    torch.manual_seed(0)
    model = build_classifier(model_cfg(pooling="mean"), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_lr_range_test(model, iter(_batches(20)), training, SPEC, min_lr=1e-6, max_lr=10.0, steps=60)
    assert result.steps_run <= 60 and len(result.lrs) == len(result.losses) == result.steps_run
    assert result.lrs[0] < result.suggested_lr < result.lrs[-1] / 10  # inside the range, below where it ends
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    # The chosen rate does train the model from its initial weights: the loss falls.
    torch.manual_seed(0)
    fresh = build_classifier(model_cfg(pooling="mean"), 2)
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=result.suggested_lr)
    from trainers.preprocess import model_inputs

    losses = []
    for batch in _batches(30, seed=1):
        loss = torch.nn.functional.cross_entropy(fresh(**model_inputs(batch, SPEC)), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    plot = tmp_path / "lr_range.png"
    plot_lr_range(result, plot, "tiny model")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
