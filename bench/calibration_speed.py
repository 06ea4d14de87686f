"""Calibration speed: the vectorised threshold sweep and the temperature fit against
the naive loops they replace.

    python bench/calibration_speed.py [--samples 1000000] [--candidates 1000]

1. Threshold sweep over `--samples` samples x `--candidates` thresholds (10 classes):
   `calibration.threshold.sweep_thresholds` (one sort + bincounts) against
   `sweep_thresholds_naive` (a mask and a scikit-learn macro-F1 per threshold). The
   naive loop is timed on `--naive-candidates` evenly spaced thresholds and scaled to
   all of them (its cost per threshold is flat); both agree on those thresholds.
2. Temperature fit on 100,000 x 100 logits: `fit_temperature` (bounded scalar search in
   log T) against a naive grid of 200 temperatures scored with scikit-learn's log_loss.

Prints JSON (also written to bench/results/calibration_speed.json). Numbers are quoted
in BENCHMARKS.md. Targets: sweep under 1 s and >= 100x the naive loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.special import softmax
from sklearn.metrics import log_loss

from calibration.temperature import fit_temperature
from calibration.threshold import candidate_thresholds, sweep_thresholds, sweep_thresholds_naive


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def bench_sweep(samples: int, candidates: int, naive_candidates: int, classes: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    confidence = rng.random(samples)
    labels = rng.integers(0, classes, samples)
    preds = np.where(rng.random(samples) < confidence, labels, rng.integers(0, classes, samples))
    thresholds = candidate_thresholds(confidence, candidates)[:candidates]
    fast_s, fast = best_of(3, lambda: sweep_thresholds(confidence, preds, labels, thresholds, classes))
    subset = np.linspace(0, len(thresholds) - 1, naive_candidates).astype(int)
    naive_s, naive = best_of(1, lambda: sweep_thresholds_naive(confidence, preds, labels, thresholds[subset]))
    for key in ("accepted", "accepted_accuracy", "macro_f1_accepted"):
        np.testing.assert_allclose(fast[key][subset], naive[key], rtol=1e-10, err_msg=key)
    naive_all_s = naive_s / len(subset) * len(thresholds)
    return {
        "samples": samples,
        "candidates": int(len(thresholds)),
        "classes": classes,
        "vectorised_s": round(fast_s, 4),
        "naive_s_measured": round(naive_s, 3),
        "naive_candidates_measured": int(len(subset)),
        "naive_s_for_all_candidates": round(naive_all_s, 2),
        "speedup": round(naive_all_s / fast_s, 1),
        "meets_target": bool(fast_s < 1.0 and naive_all_s / fast_s >= 100),
    }


def naive_temperature(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> float:
    classes = np.arange(logits.shape[1])
    losses = [log_loss(labels, softmax(logits / t, axis=1), labels=classes) for t in grid]
    return float(grid[int(np.argmin(losses))])


def bench_temperature(samples: int = 100_000, classes: int = 100) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=3.0, size=(samples, classes))
    cumulative = softmax(true_logits, axis=1).cumsum(axis=1)
    labels = np.minimum((rng.random((samples, 1)) > cumulative).sum(axis=1), classes - 1)
    logits = true_logits * 2.0  # over-confident by a factor 2: the right answer is T = 2
    fit_s, fitted = best_of(3, lambda: fit_temperature(logits, labels))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    naive_s, naive_t = best_of(1, lambda: naive_temperature(logits, labels, grid))
    return {
        "samples": samples,
        "classes": classes,
        "true_temperature": 2.0,
        "fitted_temperature": round(fitted, 5),
        "fit_s": round(fit_s, 3),
        "naive_grid_points": len(grid),
        "naive_temperature": round(naive_t, 5),
        "naive_s": round(naive_s, 2),
        "speedup": round(naive_s / fit_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--naive-candidates", type=int, default=20)
    args = parser.parse_args()
    result = {
        "benchmark": "calibration_speed",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "numpy": np.__version__},
        "threshold_sweep": bench_sweep(args.samples, args.candidates, args.naive_candidates),
        "temperature_fit": bench_temperature(),
    }
    out = Path(__file__).parent / "results" / "calibration_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
