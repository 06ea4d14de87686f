"""Confidence-threshold sweep: metrics of "accept when confidence >= tau" for every
candidate tau at once.

A sample with confidence c is accepted by every candidate tau <= c. With candidates
sorted ascending, `r = searchsorted(taus, c, side="right")` counts those candidates,
so the number of samples accepted at candidate j is the number with r > j: one
`bincount` of r and one reversed cumulative sum give every candidate's counts. Per-class
counts (for macro-F1) use the same trick on (r, class) pairs. Cost: O(n log J + J*C)
instead of a pass over all n samples per candidate.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from calibration.temperature import CalibrationError


def candidate_thresholds(confidence: np.ndarray, num: int) -> np.ndarray:
    """Ascending unique candidates: quantiles of the confidences (plus 0: accept all)."""
    quantiles = np.quantile(confidence, np.linspace(0.0, 1.0, num))
    return np.unique(np.concatenate([[0.0], quantiles]))


def _accepted_counts(rank: np.ndarray, num_thresholds: int, keys: np.ndarray | None = None, num_keys: int = 1) -> np.ndarray:
    """counts[j, k] = number of samples with key k accepted at threshold j."""
    keys = np.zeros_like(rank) if keys is None else keys
    hist = np.bincount(rank * num_keys + keys, minlength=(num_thresholds + 1) * num_keys)
    hist = hist.reshape(num_thresholds + 1, num_keys)
    # accepted at j: rank in j+1..J  ->  suffix sums of hist, shifted by one
    suffix = np.cumsum(hist[::-1], axis=0)[::-1]
    return suffix[1:]


def accepted_and_correct(
    confidence: np.ndarray, correct: np.ndarray, thresholds: np.ndarray, rank: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, correct among accepted) per ascending candidate threshold. `rank`
    (searchsorted of confidence in thresholds) can be passed when already computed."""
    if rank is None:
        rank = np.searchsorted(thresholds, confidence, side="right")
    num = len(thresholds)
    return _accepted_counts(rank, num)[:, 0], _accepted_counts(rank[correct], num)[:, 0]


def sweep_thresholds(
    confidence: np.ndarray, preds: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Per candidate: coverage, accepted count, accepted accuracy, selective risk,
    macro-F1 of the accepted samples (over the classes present among them, as
    scikit-learn's average='macro' does)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    n, num = len(confidence), len(thresholds)
    rank = np.searchsorted(thresholds, confidence, side="right")
    correct = preds == labels
    accepted, right = accepted_and_correct(confidence, correct, thresholds, rank)
    true_pos = _accepted_counts(rank[correct], num, labels[correct], num_classes)
    pred_count = _accepted_counts(rank, num, preds, num_classes)
    label_count = _accepted_counts(rank, num, labels, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        present = (pred_count + label_count) > 0
        f1_per_class = np.where(present, 2 * true_pos / (pred_count + label_count), 0.0)
        macro_f1 = np.where(present.any(axis=1), f1_per_class.sum(axis=1) / np.maximum(present.sum(axis=1), 1), 0.0)
        accepted_accuracy = np.where(accepted > 0, right / np.maximum(accepted, 1), np.nan)
    return {
        "threshold": thresholds,
        "accepted": accepted,
        "coverage": accepted / n,
        "accepted_accuracy": accepted_accuracy,
        "selective_risk": 1.0 - accepted_accuracy,
        "errors": accepted - right,
        "macro_f1_accepted": macro_f1,
    }


def sweep_thresholds_naive(
    confidence: np.ndarray, preds: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """The obvious loop (one mask and one scikit-learn call per candidate): the
    reference the vectorised sweep is tested and benchmarked against."""
    rows = []
    for tau in thresholds:
        mask = confidence >= tau
        k = int(mask.sum())
        acc = float((preds[mask] == labels[mask]).mean()) if k else np.nan
        f1 = float(f1_score(labels[mask], preds[mask], average="macro", zero_division=0)) if k else 0.0
        rows.append((k, k / len(confidence), acc, f1))
    accepted, coverage, accuracy, macro_f1 = (np.array(c) for c in zip(*rows, strict=True))
    return {
        "threshold": np.asarray(thresholds),
        "accepted": accepted,
        "coverage": coverage,
        "accepted_accuracy": accuracy,
        "macro_f1_accepted": macro_f1,
    }


def choose_threshold(sweep: dict[str, np.ndarray], objective: str, min_coverage: float) -> int:
    """Index of the best candidate by the objective among those with enough coverage;
    ties go to the lower threshold (more coverage)."""
    metric = sweep["macro_f1_accepted"] if objective == "macro_f1_accepted" else sweep["accepted_accuracy"]
    feasible = sweep["coverage"] >= min_coverage - 1e-12
    if not feasible.any():
        raise CalibrationError(f"no threshold keeps coverage >= {min_coverage}")
    scores = np.where(feasible, np.nan_to_num(metric, nan=-1.0), -np.inf)
    return int(np.argmax(scores))  # argmax returns the first (lowest) maximal threshold
