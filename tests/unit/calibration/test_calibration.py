from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import brier_score_loss, log_loss

from calibration.evaluate import evaluate_under_policy
from calibration.guardrail import guardrail_decisions, guardrail_metrics
from calibration.metrics import calibration_summary, ece_mce, mean_nll
from calibration.policy import Policy
from calibration.risk_control import clopper_pearson_upper, learn_then_test
from calibration.temperature import CalibrationError, fit_temperature
from calibration.threshold import candidate_thresholds, choose_threshold, sweep_thresholds, sweep_thresholds_naive
from tests.helpers.references import exhaustive_guardrail


def test_ece_mce_hand_checked() -> None:
    # 15 equal bins over (0, 1]. Bin 14 = (0.9333, 1]: confidences 0.95, 0.95, 1.0 with
    # 2 of 3 correct -> |0.6667 - 0.9667| = 0.3. Bin 7 = (0.4667, 0.5333]: 0.5, 0.5 with
    # 1 of 2 correct -> |0.5 - 0.5| = 0. Bin 10 = (0.6667, 0.7333]: 0.7, correct -> 0.3.
    confidence = np.array([0.95, 0.95, 1.0, 0.5, 0.5, 0.7])
    correct = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    ece, mce = ece_mce(confidence, correct, 15)
    assert ece == pytest.approx(3 / 6 * 0.3 + 2 / 6 * 0.0 + 1 / 6 * 0.3)
    assert mce == pytest.approx(0.3)
    # a confidence exactly on an edge (8/15) belongs to the bin below it
    ece_edge, _ = ece_mce(np.array([8 / 15]), np.array([True]), 15)
    assert ece_edge == pytest.approx(1 - 8 / 15)


def test_nll_and_brier_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 7)) * 3
    labels = rng.integers(0, 7, 500)
    summary = calibration_summary(logits, labels, temperature=1.7)
    probs = softmax(logits / 1.7, axis=1)
    assert summary["nll"] == pytest.approx(log_loss(labels, probs, labels=range(7)), rel=1e-9)
    assert summary["brier"] == pytest.approx(brier_score_loss(labels, probs, labels=range(7)), rel=1e-9)
    assert mean_nll(logits, labels, 1.7) == pytest.approx(summary["nll"], rel=1e-9)


def calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    cumulative = softmax(logits, axis=1).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("scale", [0.5, 2.5])
def test_temperature_recovered_within_two_percent(scale: float) -> None:
    logits, labels = calibrated_logits(20_000, 10, seed=1)
    temperature = fit_temperature(logits * scale, labels)
    assert temperature == pytest.approx(scale, rel=0.02)
    before = calibration_summary(logits * scale, labels)
    after = calibration_summary(logits * scale, labels, temperature)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]


def test_temperature_refuses_degenerate_data() -> None:
    logits = np.eye(5)[np.arange(100) % 5] * 4.0
    labels = np.arange(100) % 5  # every sample correct: NLL falls forever as T -> 0
    with pytest.raises(CalibrationError, match="every one of the 100 calibration samples is classified correctly"):
        fit_temperature(logits, labels)
    with pytest.raises(CalibrationError, match="val_calib has 10 samples; temperature scaling needs at least 50"):
        fit_temperature(logits[:10], labels[:10])
    bad = logits.copy()
    bad[3, 1] = np.nan
    with pytest.raises(CalibrationError, match="NaN or inf"):
        fit_temperature(bad, labels)


def test_clopper_pearson_known_values() -> None:
    assert float(clopper_pearson_upper(0, 100, 0.05)) == pytest.approx(0.0295, abs=5e-5)
    assert float(clopper_pearson_upper(5, 1000, 0.05)) == pytest.approx(0.0105, abs=5e-5)
    assert float(clopper_pearson_upper(10, 10, 0.05)) == 1.0
    # a temperature that runs to a bound is refused, not returned
    logits, labels = calibrated_logits(2000, 4, seed=6)
    with pytest.raises(CalibrationError, match="ran to its bound"):
        fit_temperature(logits * 3.0, labels, min_temperature=0.5, max_temperature=2.0)


def test_vectorised_sweep_equals_naive_loop() -> None:
    rng = np.random.default_rng(2)
    n, classes = 3000, 6
    confidence = rng.random(n)
    labels = rng.integers(0, classes, n)
    preds = np.where(rng.random(n) < confidence, labels, rng.integers(0, classes, n))
    thresholds = candidate_thresholds(confidence, 120)
    fast = sweep_thresholds(confidence, preds, labels, thresholds, classes)
    slow = sweep_thresholds_naive(confidence, preds, labels, thresholds)
    for key in ("accepted", "coverage", "accepted_accuracy", "macro_f1_accepted"):
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-12, atol=1e-12, err_msg=key)
    # the highest threshold accepts only the top sample; 0 accepts everything
    assert fast["accepted"][0] == n and fast["accepted"][-1] == 1


def test_choose_threshold_respects_coverage() -> None:
    sweep = {
        "coverage": np.array([1.0, 0.9, 0.5, 0.1]),
        "accepted_accuracy": np.array([0.7, 0.8, 0.95, 1.0]),
        "macro_f1_accepted": np.array([0.6, 0.85, 0.85, 1.0]),
    }
    assert choose_threshold(sweep, "accuracy_at_coverage", 0.5) == 2
    assert choose_threshold(sweep, "macro_f1_accepted", 0.5) == 1  # tie: more coverage wins
    with pytest.raises(CalibrationError, match="no threshold keeps coverage"):
        choose_threshold({**sweep, "coverage": np.array([0.4, 0.3, 0.2, 0.1])}, "macro_f1_accepted", 0.5)


def true_selective_risk(tau: float) -> float:
    """Synthetic model: confidence s ~ U(0.3, 1), P(correct | s) = s ** 1.5, so the
    risk among s >= tau is 1 - (1 - tau**2.5) / (2.5 (1 - tau)) for tau >= 0.3."""
    tau = max(tau, 0.3)
    return 1.0 - (1.0 - tau**2.5) / (2.5 * (1.0 - tau)) if tau < 1 else 0.0


def test_risk_control_guarantee_holds_in_simulation() -> None:
    alpha, delta, draws = 0.1, 0.1, 300
    rng = np.random.default_rng(3)
    violations, qualified, coverages = 0, 0, []
    for _ in range(draws):
        # 5000 samples give the strict end of the sequence enough power to start: with
        # 1000, the top 100 (true risk ~5%) fail to certify about half the time and the
        # fixed sequence stops there (correctly, but the check would be vacuous).
        confidence = rng.uniform(0.3, 1.0, 5000)
        correct = rng.random(5000) < confidence**1.5
        result = learn_then_test(confidence, correct, alpha, delta, min_accepted=100)
        if result.qualified:
            qualified += 1
            coverages.append(result.calib_coverage)
            violations += true_selective_risk(result.threshold) > alpha
    assert qualified >= 0.9 * draws  # not vacuous: it certifies almost always...
    assert np.mean(coverages) > 0.1  # ...with real coverage (the best possible is ~0.19)
    # P(violation) <= delta; allow three binomial standard errors of simulation noise
    assert violations / draws <= delta + 3 * np.sqrt(delta * (1 - delta) / draws)


def test_risk_control_says_when_nothing_qualifies() -> None:
    rng = np.random.default_rng(4)
    confidence = rng.random(200)
    correct = rng.random(200) < 0.5  # 50% errors at every confidence
    result = learn_then_test(confidence, correct, alpha=0.05, delta=0.05)
    assert not result.qualified and result.threshold is None
    assert result.message.startswith("no threshold qualifies")
    assert result.table[0]["status"] == "skipped"  # the strictest candidates have too few samples


def test_guardrail_band_edges() -> None:
    confidence = np.array([0.95, 0.8, 0.75, 0.7, 0.65, 0.6, 0.1])
    decisions = guardrail_decisions(confidence, center=0.7, width=0.1).tolist()
    assert decisions == ["accept", "accept", "accept", "assist", "assist", "abstain", "abstain"]
    m = guardrail_metrics(confidence, np.array([1, 1, 0, 1, 1, 0, 0], bool), 0.7, 0.1, 0.3, 0.4)
    assert (m["coverage"], m["assist_rate"], m["accepted_accuracy"]) == (3 / 7, 2 / 7, 2 / 3)
    assert m["feasible"]


def test_exhaustive_guardrail_respects_constraints() -> None:
    rng = np.random.default_rng(5)
    confidence = rng.random(2000)
    correct = rng.random(2000) < confidence
    best, rows = exhaustive_guardrail(confidence, correct, [0.3, 0.5, 0.7, 0.9], [0.0, 0.1, 0.2], 0.1, 0.3)
    assert len(rows) == 12 and best["feasible"]
    assert best["assist_rate"] <= 0.1 and best["coverage"] >= 0.3
    feasible = [r for r in rows if r["feasible"]]
    assert best["accepted_accuracy"] == max(r["accepted_accuracy"] for r in feasible)


def test_policy_validation_and_decisions() -> None:
    with pytest.raises(ValueError, match="needs a threshold"):
        Policy(rule="risk_control")
    with pytest.raises(ValueError, match="needs center and width"):
        Policy(rule="guardrail", center=0.5)
    confidence = np.array([0.2, 0.5, 0.9])
    assert Policy(rule="threshold", threshold=0.5).decide(confidence).tolist() == ["abstain", "accept", "accept"]
    assert Policy().decide(confidence).tolist() == ["accept"] * 3
    round_trip = Policy.model_validate_json(Policy(temperature=2.0, rule="guardrail", center=0.6, width=0.2).model_dump_json())
    assert round_trip.decide(confidence).tolist() == ["abstain", "assist", "accept"]


def test_evaluate_under_policy_counts() -> None:
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]]))
    labels = np.array([0, 1, 1, 0])
    metrics = evaluate_under_policy(logits, labels, Policy(rule="threshold", threshold=0.7), ["a", "b"])
    assert metrics["accuracy"] == 0.5
    assert metrics["confusion_matrix"]["matrix"] == [[1, 1], [1, 1]]
    policy = metrics["policy"]
    assert policy["coverage"] == 0.5 and policy["accepted_accuracy"] == 1.0 and policy["selective_risk"] == 0.0
    assert policy["abstain_rate"] == 0.5 and policy["assist_rate"] == 0.0


def test_a_guardrail_with_no_feasible_band_says_what_the_grid_could_reach() -> None:
    from calibration.fit import policy_from

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 0.6, 400)  # a model unsure of most inputs
    correct = rng.random(400) < confidence
    centers, widths = [0.5, 0.7], [0.0, 0.4]
    best, rows = exhaustive_guardrail(confidence, correct, centers, widths, 0.1, 0.5)
    assert not best["feasible"]
    band = {**best, "max_assist_rate": 0.1, "min_coverage": 0.5, "results": rows}
    reach = max((r for r in rows if r["assist_rate"] <= 0.1), key=lambda r: r["coverage"])
    assert (reach["center"], reach["width"]) == (0.5, 0.0)
    with pytest.raises(CalibrationError) as raised:
        policy_from("guardrail", 1.0, {"guardrail": band})
    assert str(raised.value).startswith(
        "policy guardrail: no band met max_assist_rate 0.1 and min_coverage 0.5 on val_calib: the most any band "
        f"accepted within the assist limit was {reach['coverage']:.0%} (center 0.5, width 0). ")
    assert "lower calibration.guardrail.min_coverage" in str(raised.value)
    # Every band over the assist limit: the message says that instead of a coverage.
    over = [{**r, "assist_rate": 0.5} for r in rows]
    with pytest.raises(CalibrationError, match="every band of the grid sent more than that to a person"):
        policy_from("guardrail", 1.0, {"guardrail": {**band, "results": over}})
