"""Monitoring without labels: live answers against what calibration promised.

Because a served model's confidences are calibrated (a confidence of 0.8 is right 80% of
the time on val_calib), a window of live answers says how the model is doing before a
single label arrives:

- **estimated accuracy**: the mean calibrated confidence of the accepted answers. Each
  accepted answer is right with probability ≈ its confidence, so the mean is the
  expected accuracy; the interval adds the sampling spread (a normal interval of a sum of
  Bernoulli variables, variance Σ p(1-p) / n²) to the calibration error measured on
  val_calib (ECE after temperature), since the confidences are only that well calibrated.
  The estimate holds while live inputs resemble the calibration data — which the drift
  statistics check. Where they do not, the model can be confidently wrong and the
  estimate stays high; the audit sample (a random share of accepted answers a person
  labels) measures the accepted accuracy itself, and is flagged when its interval and
  the estimate's do not meet.
- **drift**: the live confidence histogram against val_calib's on the same bins (the
  calibration views' decision histogram): the population stability index (PSI; < 0.1
  stable, 0.1–0.25 moderate, > 0.25 a shift, by the usual reading), on 10 bins (the
  views' 40 merged: with few answers PSI grows with the bin count by noise alone, about
  (bins − 1)·(1/n + 1/m) for two samples of one distribution), and a two-sample
  Kolmogorov–Smirnov test. The reference is binned, so the KS statistic is taken at the
  bin edges: a lower bound of the exact one, and its p-value (the asymptotic
  distribution `scipy.stats.ks_2samp` uses for large samples) errs towards "no drift".
  Confidences alone miss a shift the model is confidently wrong about (inputs it never
  saw, mapped onto a few classes with the usual confidence), so the mix of *predicted*
  classes is compared too: against the predictions on val_test (the evaluation's
  confusion matrix), by PSI over classes and a chi-square test. Either signal flags drift.
- **decision mix**: the live accept / assist / abstain rates against the rates the policy
  gave on val_test, each with a Wilson interval, flagged when the promise lies outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from calibration.guardrail import ABSTAIN, ACCEPT, ASSIST

# PSI above this (with the test rejecting at DEFAULT_DRIFT_P) flags drift: 0.2 sits
# between the usual "moderate" (0.1) and "significant" (0.25) readings of the index.
DEFAULT_DRIFT_PSI = 0.2
DEFAULT_DRIFT_P = 0.01

DECISIONS = (ACCEPT, ASSIST, ABSTAIN)
Z_95 = 1.959963984540054
# PSI's empty-bin floor: a bin empty on one side would otherwise make the index infinite.
PSI_FLOOR = 1e-4
# PSI is taken on this many bins (see the module).
PSI_BINS = 10


@dataclass(frozen=True)
class ConfidenceReference:
    """What a model's calibration promised, from its run's files: val_calib's confidence
    histogram (`edges`, `counts`), the decision rates on val_test, the ECE after temperature."""

    edges: np.ndarray
    counts: np.ndarray
    promised: dict[str, float]
    ece: float
    predicted: np.ndarray  # predictions per class (label id) on val_test

    @classmethod
    def from_views(cls, views: dict[str, Any], promised: dict[str, float], ece: float | None,
                   confusion: list[list[int]]) -> ConfidenceReference:
        """From the calibration views (`calibration/views.json`: the decision histogram's
        counts summed over decisions are val_calib's confidence histogram) and the
        evaluation (`confusion`: val_test's matrix, true × predicted; its column sums
        are the predicted classes)."""
        histogram = views["decision_histogram"]
        counts = np.sum([np.asarray(c, dtype=np.int64) for c in histogram["counts"].values()], axis=0)
        return cls(edges=np.asarray(histogram["edges"], dtype=np.float64), counts=counts,
                   promised={d: float(promised.get(d, 0.0)) for d in DECISIONS}, ece=float(ece or 0.0),
                   predicted=np.asarray(confusion, dtype=np.int64).sum(axis=0))

    def bin_counts(self, confidence: np.ndarray) -> np.ndarray:
        """Live confidences on the reference's bins (right-closed, as the views bin them)."""
        n_bins = len(self.edges) - 1
        index = np.clip(np.ceil(np.asarray(confidence, dtype=np.float64) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        return np.bincount(index, minlength=n_bins)


def merge_bins(counts: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Adjacent bins summed down to `bins` (when they divide evenly; else as they are)."""
    counts = np.asarray(counts)
    return counts.reshape(bins, -1).sum(axis=1) if len(counts) % bins == 0 and len(counts) > bins else counts


def population_stability_index(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI = Σ (live% − ref%) · ln(live% / ref%) over shared bins, merged to PSI_BINS."""
    reference, live = merge_bins(reference), merge_bins(live)
    ref = np.maximum(reference / max(reference.sum(), 1), PSI_FLOOR)
    cur = np.maximum(live / max(live.sum(), 1), PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def binned_ks(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """The two-sample KS statistic at the bin edges and its asymptotic p-value."""
    n, m = int(reference.sum()), int(live.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    statistic = float(np.max(np.abs(np.cumsum(reference) / n - np.cumsum(live) / m)))
    effective = n * m / (n + m)
    return statistic, float(stats.kstwobign.sf(statistic * math.sqrt(effective)))


def prediction_shift(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """PSI over classes and the chi-square test's p-value of the live predicted classes
    against the reference's shares (half a count added to every reference class, so a
    class never predicted on val_test is unlikely, not impossible)."""
    m = int(live.sum())
    if m == 0:
        return 0.0, 1.0
    shares = (reference + 0.5) / (reference.sum() + 0.5 * len(reference))
    live_shares = np.maximum(live / m, PSI_FLOOR)
    psi = float(np.sum((live_shares - shares) * np.log(live_shares / shares)))
    return psi, float(stats.chisquare(live, shares * m).pvalue)


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% interval of a rate (Wilson: sound at rates near 0 or 1 and small n)."""
    if n == 0:
        return 0.0, 1.0
    rate = successes / n
    denominator = 1 + Z_95**2 / n
    center = (rate + Z_95**2 / (2 * n)) / denominator
    half = Z_95 * math.sqrt(rate * (1 - rate) / n + Z_95**2 / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def estimated_accuracy(accepted_confidence: np.ndarray, ece: float) -> dict[str, Any]:
    """Expected accuracy of the accepted answers, with its interval (see the module)."""
    p = np.asarray(accepted_confidence, dtype=np.float64)
    n = len(p)
    if n == 0:
        return {"n": 0, "estimate": None, "low": None, "high": None}
    estimate = float(p.mean())
    spread = Z_95 * math.sqrt(float(np.sum(p * (1 - p)))) / n
    return {"n": n, "estimate": estimate, "low": max(0.0, estimate - spread - ece),
            "high": min(1.0, estimate + spread + ece)}


def measured_accuracy(correct: np.ndarray | None) -> dict[str, Any] | None:
    """The share of reviewed answers that were right, with its Wilson interval (None
    before any review)."""
    if correct is None or not len(correct):
        return None
    right = int(np.sum(correct))
    low, high = wilson_interval(right, len(correct))
    return {"n": len(correct), "accuracy": right / len(correct), "low": low, "high": high}


def decision_mix(decisions: np.ndarray, promised: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each decision's live rate, its interval and the rate promised on val_test."""
    n = len(decisions)
    mix = {}
    for decision in DECISIONS:
        count = int(np.sum(decisions == decision))
        low, high = wilson_interval(count, n)
        expected = promised.get(decision, 0.0)
        mix[decision] = {"count": count, "rate": count / n if n else None, "low": low, "high": high,
                         "promised": expected, "off": bool(n and not low <= expected <= high)}
    return mix


def monitor_window(
    reference: ConfidenceReference,
    confidence: np.ndarray,
    decisions: np.ndarray,
    predictions: np.ndarray,
    window_s: float,
    drift_psi: float = DEFAULT_DRIFT_PSI,
    drift_p: float = DEFAULT_DRIFT_P,
    reviewed_correct: np.ndarray | None = None,
    audited_correct: np.ndarray | None = None,
) -> dict[str, Any]:
    """How one window of live answers compares with the calibration (see the module).
    `predictions`: the predicted label ids. A signal flags drift when its PSI exceeds
    `drift_psi` and its test rejects at `drift_p` (both: PSI alone is noisy on a small
    window, a test alone flags shifts too small to matter on a large one).
    `reviewed_correct`: whether each reviewed assist / abstain answer in the window was
    right (the band's measured accuracy); `audited_correct`: the same for the audit
    sample of accepted answers, which measures what the estimate estimates."""
    confidence = np.asarray(confidence, dtype=np.float64)
    decisions = np.asarray(decisions).astype(str)
    live = reference.bin_counts(confidence)
    psi = population_stability_index(reference.counts, live)
    ks, p_value = binned_ks(reference.counts, live)
    predicted = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=len(reference.predicted))
    class_psi, chi2_p = prediction_shift(reference.predicted, predicted[: len(reference.predicted)])
    n = len(confidence)
    by_confidence = bool(n and psi > drift_psi and p_value < drift_p)
    by_prediction = bool(n and class_psi > drift_psi and chi2_p < drift_p)
    estimate = estimated_accuracy(confidence[decisions == ACCEPT], reference.ece)
    audited = measured_accuracy(audited_correct)
    if audited is not None:
        audited["contradicts_estimate"] = bool(
            estimate["estimate"] is not None and (audited["high"] < estimate["low"] or audited["low"] > estimate["high"]))
    return {
        "answers": n,
        "window_s": window_s,
        "request_rate": n / window_s if window_s > 0 else None,
        "decisions": decision_mix(decisions, reference.promised),
        "confidence": {
            "edges": reference.edges.tolist(),
            "live": live.tolist(),
            "reference": reference.counts.tolist(),
            "mean": float(confidence.mean()) if n else None,
        },
        "predicted": {"live": predicted.tolist(), "reference": reference.predicted.tolist()},
        "drift": {"psi": psi, "ks": ks, "ks_p_value": p_value, "prediction_psi": class_psi,
                  "chi2_p_value": chi2_p, "psi_threshold": drift_psi, "p_threshold": drift_p,
                  "by_confidence": by_confidence, "by_prediction": by_prediction,
                  "flagged": by_confidence or by_prediction},
        "estimated_accuracy": estimate,
        "measured_accuracy": measured_accuracy(reviewed_correct),
        "audited_accuracy": audited,
    }
