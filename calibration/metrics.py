"""Calibration metrics on top-label confidence.

NLL and Brier come from scikit-learn; ECE / MCE (which it lacks) are computed here on
equal-width bins over (0, 1], each bin's |accuracy - mean confidence| weighted by its
share of samples (ECE) or maximised over non-empty bins (MCE).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def mean_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """NLL of softmax(logits / T): the temperature fit's objective, without
    scikit-learn's per-call input checks (it runs many times per fit)."""
    log_probs = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin i holds confidences in (i/n, (i+1)/n]; a confidence of 0 goes to bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    index = bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
            "accuracy": np.where(count > 0, correct_sum / count, np.nan),
        }


def ece_mce(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    bins = reliability_bins(confidence, correct, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    weights = bins["count"][filled] / bins["count"].sum()
    return float((weights * gaps).sum()), float(gaps.max())


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, n_bins: int = 15) -> dict[str, float]:
    """NLL, ECE, MCE, Brier and accuracy of softmax(logits / T)."""
    probs = probabilities(logits, temperature)
    classes = np.arange(probs.shape[1])
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    ece, mce = ece_mce(confidence, correct, n_bins)
    return {
        "nll": float(log_loss(labels, probs, labels=classes)),
        "ece": ece,
        "mce": mce,
        "brier": float(brier_score_loss(labels, probs, labels=classes)),
        "accuracy": float(correct.mean()),
    }


def classification_summary(labels: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }
