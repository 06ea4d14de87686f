"""Monitoring without labels: the statistics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from calibration.guardrail import guardrail_decisions
from calibration.monitor import (
    ConfidenceReference,
    binned_ks,
    estimated_accuracy,
    monitor_window,
    population_stability_index,
    wilson_interval,
)

BINS = 40


def reference_from(confidence: np.ndarray, promised: dict[str, float], ece: float = 0.02) -> ConfidenceReference:
    """The reference as `from_views` reads it from a run's calibration views."""
    decisions = guardrail_decisions(confidence, 0.6, 0.2)
    edges = np.linspace(0, 1, BINS + 1)
    index = np.clip(np.ceil(confidence * BINS).astype(int) - 1, 0, BINS - 1)
    views = {"decision_histogram": {
        "edges": edges.tolist(),
        "counts": {d: np.bincount(index[decisions == d], minlength=BINS).tolist() for d in ("accept", "assist", "abstain")},
    }}
    confusion = np.diag(np.full(4, len(confidence) // 4))  # four classes, predicted equally often
    return ConfidenceReference.from_views(views, promised, ece, confusion.tolist())


def calibrated_sample(rng: np.random.Generator, n: int, a: float = 5.0, b: float = 2.0) -> np.ndarray:
    return np.clip(rng.beta(a, b, size=n), 0.101, 1.0)


def test_the_reference_histogram_is_every_val_calib_row_on_the_views_bins() -> None:
    confidence = calibrated_sample(np.random.default_rng(0), 2000)
    reference = reference_from(confidence, {"accept": 0.7, "assist": 0.2, "abstain": 0.1})
    assert reference.counts.sum() == 2000
    assert np.array_equal(reference.bin_counts(confidence), reference.counts)
    assert reference.bin_counts(np.array([1.0, 0.025, 0.0251]))[[BINS - 1, 0, 1]].tolist() == [1, 1, 1]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = reference_from(calibrated_sample(rng, 5000), {})
    same = reference.bin_counts(calibrated_sample(rng, 5000))
    shifted = reference.bin_counts(calibrated_sample(rng, 5000, a=2.0, b=2.0))
    assert population_stability_index(reference.counts, reference.counts) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(reference.counts, same) < 0.05
    assert population_stability_index(reference.counts, shifted) > 0.25


def test_binned_ks_agrees_with_scipy_on_the_bin_edges_and_rejects_only_a_shift() -> None:
    rng = np.random.default_rng(2)
    ref_sample = calibrated_sample(rng, 3000)
    reference = reference_from(ref_sample, {})
    live_sample = calibrated_sample(rng, 800, a=3.0, b=2.0)
    statistic, p_value = binned_ks(reference.counts, reference.bin_counts(live_sample))
    # Snapped to the right edge of their bins, the samples' exact KS statistic is the binned one.
    snap = lambda x: np.ceil(x * BINS) / BINS
    assert statistic == pytest.approx(stats.ks_2samp(snap(ref_sample), snap(live_sample)).statistic, abs=1e-9)
    assert statistic <= stats.ks_2samp(ref_sample, live_sample).statistic + 1e-9  # a lower bound
    assert p_value < 1e-6
    _, same_p = binned_ks(reference.counts, reference.bin_counts(calibrated_sample(rng, 800)))
    assert same_p > 0.01


def test_the_estimated_accuracy_of_calibrated_answers_covers_their_real_accuracy() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        confidence = calibrated_sample(rng, 300)
        correct = rng.random(300) < confidence  # calibrated: right with probability = confidence
        estimate = estimated_accuracy(confidence, ece=0.0)
        covered += estimate["low"] <= correct.mean() <= estimate["high"]
    assert 0.9 <= covered / 200 <= 0.99  # a 95% interval
    assert estimated_accuracy(np.array([]), 0.05)["estimate"] is None
    wide = estimated_accuracy(np.array([0.9] * 100), ece=0.05)
    assert wide["low"] == pytest.approx(0.9 - 1.959964 * 0.3 / 10 - 0.05, abs=1e-6)


def test_wilson_interval_matches_its_formula_and_stays_inside_zero_one() -> None:
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def test_a_window_of_shifted_answers_is_flagged_and_its_mix_is_off_the_promise() -> None:
    rng = np.random.default_rng(4)
    ref_conf = calibrated_sample(rng, 4000)
    ref_decisions = guardrail_decisions(ref_conf, 0.6, 0.2)
    promised = {d: float(np.mean(ref_decisions == d)) for d in ("accept", "assist", "abstain")}
    reference = reference_from(ref_conf, promised)

    live = calibrated_sample(rng, 600)
    classes = rng.integers(0, 4, size=600)
    steady = monitor_window(reference, live, guardrail_decisions(live, 0.6, 0.2), classes, window_s=60, drift_psi=0.2)
    assert not steady["drift"]["flagged"] and steady["answers"] == 600 and steady["request_rate"] == 10
    assert not any(d["off"] for d in steady["decisions"].values())

    shifted = calibrated_sample(rng, 600, a=2.0, b=3.0)  # inputs the model is unsure of
    moved = monitor_window(reference, shifted, guardrail_decisions(shifted, 0.6, 0.2), classes, window_s=60, drift_psi=0.2)
    assert moved["drift"]["flagged"] and moved["drift"]["by_confidence"] and moved["drift"]["psi"] > 0.25
    assert not moved["drift"]["by_prediction"]
    assert moved["decisions"]["abstain"]["off"] and moved["decisions"]["abstain"]["rate"] > promised["abstain"]
    assert moved["estimated_accuracy"]["n"] == moved["decisions"]["accept"]["count"]
    assert sum(moved["confidence"]["live"]) == 600

    # Inputs mapped onto one class with the usual confidences: only the predicted classes tell.
    collapsed = monitor_window(reference, live, guardrail_decisions(live, 0.6, 0.2), np.full(600, 2), 60, 0.2)
    assert collapsed["drift"]["by_prediction"] and not collapsed["drift"]["by_confidence"]
    assert collapsed["drift"]["flagged"] and collapsed["predicted"]["live"] == [0, 0, 600, 0]

    reviewed = monitor_window(reference, live, guardrail_decisions(live, 0.6, 0.2), classes, 60, 0.2,
                              reviewed_correct=np.array([True, True, False, True]))
    assert reviewed["measured_accuracy"]["accuracy"] == 0.75 and reviewed["measured_accuracy"]["n"] == 4
    assert reviewed["audited_accuracy"] is None


def test_an_audit_that_disagrees_with_the_estimate_is_flagged() -> None:
    """Confidently wrong answers keep the estimate high; a labelled random sample of the
    accepted answers is what shows it, and only when the intervals do not meet."""
    rng = np.random.default_rng(7)
    ref_conf = calibrated_sample(rng, 4000)
    reference = reference_from(ref_conf, {"accept": 0.6, "assist": 0.2, "abstain": 0.2})
    live = calibrated_sample(rng, 600)
    decisions = guardrail_decisions(live, 0.6, 0.2)
    classes = rng.integers(0, 4, size=600)
    estimate = monitor_window(reference, live, decisions, classes, 60)["estimated_accuracy"]["estimate"]

    wrong = monitor_window(reference, live, decisions, classes, 60, audited_correct=np.array([True] * 2 + [False] * 18))
    assert wrong["audited_accuracy"]["n"] == 20 and wrong["audited_accuracy"]["accuracy"] == 0.1
    assert wrong["audited_accuracy"]["high"] < wrong["estimated_accuracy"]["low"]
    assert wrong["audited_accuracy"]["contradicts_estimate"]
    assert wrong["measured_accuracy"] is None  # the band's reviews are counted apart

    right_share = round(estimate * 20)
    agreeing = monitor_window(reference, live, decisions, classes, 60,
                              audited_correct=np.array([True] * right_share + [False] * (20 - right_share)))
    assert not agreeing["audited_accuracy"]["contradicts_estimate"]
