"""The guardrail: an uncertainty band (center c, width w) on calibrated confidence.

    confidence >= c + w/2        -> accept
    c - w/2 <= confidence < c + w/2 -> assist (send to a person)
    confidence <  c - w/2        -> abstain

A Ray Tune grid sweep over (c, w) scores each band by the accuracy of what it accepts,
subject to assist rate <= max_assist_rate and coverage >= min_coverage. The
calibration arrays reach the trials through the object store (`tune.with_parameters`).
The winner is chosen from the full results table by `select_best`, the same rule the
exhaustive reference uses, so ties resolve identically: best feasible accepted
accuracy, then more coverage, then a narrower band, then a lower center.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ACCEPT, ASSIST, ABSTAIN = "accept", "assist", "abstain"


def band_edges(center: float, width: float) -> tuple[float, float]:
    return center - width / 2.0, center + width / 2.0


def guardrail_decisions(confidence: np.ndarray, center: float, width: float) -> np.ndarray:
    low, high = band_edges(center, width)
    return np.where(confidence >= high, ACCEPT, np.where(confidence >= low, ASSIST, ABSTAIN))


def within_assist_limit(assist_rate: float, max_assist_rate: float) -> bool:
    """The band sends no more than the limit to a person (a rate equal to it, up to
    rounding, counts as within)."""
    return assist_rate <= max_assist_rate + 1e-12


def guardrail_metrics(
    confidence: np.ndarray,
    correct: np.ndarray,
    center: float,
    width: float,
    max_assist_rate: float,
    min_coverage: float,
) -> dict[str, Any]:
    low, high = band_edges(center, width)
    accepted = confidence >= high
    assisted = (confidence >= low) & ~accepted
    n = len(confidence)
    coverage = float(accepted.mean())
    assist_rate = float(assisted.mean())
    accepted_accuracy = float(correct[accepted].mean()) if accepted.any() else 0.0
    feasible = within_assist_limit(assist_rate, max_assist_rate) and coverage >= min_coverage - 1e-12
    return {
        "center": float(center),
        "width": float(width),
        "coverage": coverage,
        "assist_rate": assist_rate,
        "abstain_rate": 1.0 - coverage - assist_rate,
        "accepted_accuracy": accepted_accuracy,
        "accepted": int(accepted.sum()),
        "n": n,
        "feasible": bool(feasible),
        # The value Tune reports as its metric; infeasible bands rank below all feasible.
        "score": accepted_accuracy if feasible else accepted_accuracy - 2.0,
    }


def select_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: (r["feasible"], r["accepted_accuracy"], r["coverage"], -r["width"], -r["center"]))


def _guardrail_trial(
    config: dict[str, float], confidence: np.ndarray, correct: np.ndarray, max_assist_rate: float, min_coverage: float
) -> None:
    from ray import tune

    tune.report(guardrail_metrics(confidence, correct, config["center"], config["width"], max_assist_rate, min_coverage))


def tune_guardrail(
    confidence: np.ndarray,
    correct: np.ndarray,
    centers: list[float],
    widths: list[float],
    max_assist_rate: float,
    min_coverage: float,
    storage_dir: Path,
    max_concurrent_trials: int = 2,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid-sweep (center, width) with Ray Tune; returns (best row, all rows)."""
    from ray import tune

    trainable = tune.with_parameters(
        _guardrail_trial,
        confidence=confidence,
        correct=correct,
        max_assist_rate=max_assist_rate,
        min_coverage=min_coverage,
    )
    tuner = tune.Tuner(
        # Each trial is a few vectorised numpy ops: a quarter CPU is plenty.
        tune.with_resources(trainable, {"cpu": 0.25}),
        param_space={"center": tune.grid_search(list(centers)), "width": tune.grid_search(list(widths))},
        tune_config=tune.TuneConfig(
            metric="score", mode="max", max_concurrent_trials=max_concurrent_trials, reuse_actors=True
        ),
        run_config=tune.RunConfig(name="guardrail_sweep", storage_path=str(storage_dir.resolve()), verbose=0),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} guardrail trial(s) failed: {errors[0]}")
    keys = ("center", "width", "coverage", "assist_rate", "abstain_rate", "accepted_accuracy", "accepted", "n", "feasible", "score")
    rows = [{k: r.metrics[k] for k in keys} for r in results]
    rows.sort(key=lambda r: (r["center"], r["width"]))
    return select_best(rows), rows
