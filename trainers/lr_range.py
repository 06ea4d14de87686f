"""`training.lr: auto`: a learning-rate range test before training (Smith's LR range
test, as Lightning's LearningRateFinder and fastai's lr_find run it).

The model the run would train (same seed, same recipe: parameter groups, label
smoothing, augmentation) takes `steps` AdamW steps on train batches while the learning
rate grows exponentially from `min_lr` to `max_lr`; the loss is smoothed with an
exponential moving average and the test stops early once it diverges (4x the best
smoothed loss). The suggestion is the learning rate where the smoothed loss falls
fastest (the steepest negative slope of loss against log lr), the rule Lightning
uses; the run then trains with it. The weights of the test are thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.augment import training_inputs
from trainers.config import TrainingConfig
from trainers.optim import param_groups, training_loss
from trainers.preprocess import LABEL_KEY, ImageSpec, TextSpec

SMOOTHING = 0.98  # weight of the past in the loss's moving average
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best
SKIP_START = 3  # the first steps' slopes are noise


@dataclass(frozen=True)
class LrRangeResult:
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected
    suggested_lr: float
    steps_run: int
    stopped_early: bool  # the loss diverged before max_lr
    rule: str = "steepest descent of the smoothed loss"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` learning rates spaced evenly in log scale from min_lr to max_lr."""
    if steps < 2:
        raise ValueError(f"an lr range test needs at least 2 steps, got {steps}")
    return [float(v) for v in np.geomspace(min_lr, max_lr, steps)]


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The learning rate at the steepest descent of loss against log(lr)."""
    if len(losses) < SKIP_START + 2:
        raise ValueError(f"the range test ran {len(losses)} step(s): too few to read a slope; give it more steps")
    log_lrs = np.log(np.asarray(lrs[: len(losses)]))
    slopes = np.gradient(np.asarray(losses), log_lrs)
    index = SKIP_START + int(np.argmin(slopes[SKIP_START:]))
    return float(lrs[index])


def run_lr_range_test(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    training: TrainingConfig,
    spec: ImageSpec | TextSpec | None,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 100,
    seed: int = 0,
) -> LrRangeResult:
    """Run the range test on `model` (changed in place: pass a copy you will discard).
    `batches` is cycled when it has fewer than `steps` batches."""
    schedule = lr_schedule(min_lr, max_lr, steps)
    groups = param_groups(model, training.weight_decay, 1.0, training.head_lr_scale, training.layer_decay)
    scales = [group["lr"] for group in groups]  # each group's multiple of the base lr
    optimizer = torch.optim.AdamW(groups, lr=schedule[0])
    augment_random = torch.Generator().manual_seed(seed)
    kept: list[dict[str, torch.Tensor]] = []
    source: Iterator[dict[str, torch.Tensor]] = iter(batches)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    model.train()
    for step, lr in enumerate(schedule):
        batch = next(source, None)
        if batch is None:
            if not kept:
                raise ValueError("the range test got no train batches")
            source = iter(kept)
            batch = next(source)
        elif len(kept) < steps:
            kept.append(batch)
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        inputs = training_inputs(batch, spec, training.augment, augment_random)
        loss = training_loss(model(**inputs).float(), batch[LABEL_KEY], training)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if training.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip_norm)
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if step > SKIP_START and smoothed > DIVERGED * best:
            break
    return LrRangeResult(lrs=lrs, losses=losses, suggested_lr=suggest_lr(lrs, losses), steps_run=len(lrs),
                         stopped_early=len(lrs) < steps)


def plot_lr_range(result: LrRangeResult, path: Path, title: str) -> None:
    """The loss against the learning rate (log scale), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    axes.plot(result.lrs, result.losses, color="#2b6cb0", linewidth=1.8)
    axes.axvline(result.suggested_lr, color="#c05621", linestyle="--", linewidth=1.2)
    axes.annotate(f"chosen lr {result.suggested_lr:.2g}", (result.suggested_lr, max(result.losses)),
                  textcoords="offset points", xytext=(6, -12), color="#c05621")
    # The diverging tail would squash the part that matters.
    axes.set_ylim(min(result.losses) * 0.95, min(max(result.losses), result.losses[0] * 1.5) * 1.02)
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
