"""The whole calibration of a model on val_calib, in the order each step needs the last:

    temperature -> threshold sweep -> guardrail sweep (Ray Tune) -> risk control -> policy

`fit_calibration` returns everything it found (`Calibration`: each tool's results, the
policy the configured rule chose, and the views to draw), and writes nothing: the
pipeline's stage decides where it goes. A step that cannot give an answer (too few
samples for a temperature, no threshold meeting the coverage, no feasible band or
certifiable threshold for the chosen rule) raises `CalibrationError` saying what to
change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.config import CalibrationConfig, GuardrailConfig
from calibration.guardrail import tune_guardrail, within_assist_limit
from calibration.metrics import calibration_summary, probabilities
from calibration.policy import Policy
from calibration.risk_control import learn_then_test
from calibration.temperature import CalibrationError, fit_temperature
from calibration.threshold import candidate_thresholds, choose_threshold, sweep_thresholds
from calibration.views import build_views

# A point on the risk-coverage curve: (coverage, selective risk).
Mark = tuple[float, float]


@dataclass
class Calibration:
    """What calibration found. `results` holds one entry per tool that ran
    (temperature, threshold, guardrail, risk_control: what each JSON file records) and
    the policy; `views` is the calibration as data to draw."""

    temperature: float
    results: dict[str, Any]
    policy: Policy
    views: dict[str, Any]

    @property
    def ece_before(self) -> float:
        return float(self.results["temperature"]["before"]["ece"])

    @property
    def ece_after(self) -> float:
        return float(self.results["temperature"]["after"]["ece"])


def fit_calibration(logits: np.ndarray, labels: np.ndarray, config: CalibrationConfig, tune_dir: Path) -> Calibration:
    """Calibrate on val_calib's logits and labels. `tune_dir`: Ray Tune's storage for
    the guardrail sweep (Ray must be running when the guardrail is enabled)."""
    temperature = _temperature(logits, labels, config)
    results: dict[str, Any] = {
        "n_calib": int(len(labels)),
        "temperature": {
            "enabled": config.temperature.enabled, "temperature": temperature,
            "before": calibration_summary(logits, labels, 1.0, config.ece_bins),
            "after": calibration_summary(logits, labels, temperature, config.ece_bins),
        },
    }
    probs = probabilities(logits, temperature)
    preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
    correct = preds == labels
    sweep = sweep_thresholds(confidence, preds, labels, candidate_thresholds(confidence, config.threshold.num_candidates),
                             probs.shape[1])
    marks: dict[str, Mark] = {}
    if config.threshold.enabled:
        results["threshold"] = _threshold(sweep, config, marks)
    if config.guardrail.enabled:
        results["guardrail"] = _guardrail(confidence, correct, config.guardrail, tune_dir, marks)
    if config.risk_control.enabled:
        r = config.risk_control
        controlled = learn_then_test(confidence, correct, r.alpha, r.delta, r.min_accepted, r.num_candidates)
        results["risk_control"] = controlled.to_dict()
        if controlled.qualified:
            marks["risk control"] = (controlled.calib_coverage or 0.0, controlled.calib_selective_risk or 0.0)
    policy = policy_from(config.policy, temperature, results)
    results["policy"] = policy.model_dump()
    uncalibrated = probabilities(logits)
    views = build_views(
        uncalibrated=(uncalibrated.max(axis=1), uncalibrated.argmax(axis=1) == labels),
        calibrated=(confidence, correct), policy=policy, sweep=sweep, marks=marks,
        guardrail=results.get("guardrail"), n_bins=config.ece_bins,
    )
    return Calibration(temperature=temperature, results=results, policy=policy, views=views)


def _temperature(logits: np.ndarray, labels: np.ndarray, config: CalibrationConfig) -> float:
    t = config.temperature
    if not t.enabled:
        return 1.0
    return fit_temperature(logits, labels, t.min_temperature, t.max_temperature, t.min_samples)


def _threshold(sweep: dict[str, np.ndarray], config: CalibrationConfig, marks: dict[str, Mark]) -> dict[str, Any]:
    try:
        best = choose_threshold(sweep, config.threshold.objective, config.threshold.min_coverage)
    except CalibrationError as exc:
        raise CalibrationError(f"threshold sweep: {exc}") from None
    marks["threshold"] = (float(sweep["coverage"][best]), float(sweep["selective_risk"][best]))
    return {
        "objective": config.threshold.objective,
        "min_coverage": config.threshold.min_coverage,
        **{k: float(v[best]) for k, v in sweep.items()},
        "candidates": [{k: float(v[j]) for k, v in sweep.items()} for j in range(len(sweep["threshold"]))],
    }


def _guardrail(
    confidence: np.ndarray, correct: np.ndarray, g: GuardrailConfig, tune_dir: Path, marks: dict[str, Mark]
) -> dict[str, Any]:
    centers = g.centers if g.center_mode == "auto" else [g.center]
    best_band, trials = tune_guardrail(confidence, correct, centers, g.widths, g.max_assist_rate, g.min_coverage,
                                       tune_dir, g.max_concurrent_trials)
    if best_band["accepted"]:
        marks["guardrail (accepted)"] = (best_band["coverage"], 1.0 - best_band["accepted_accuracy"])
    return {**best_band, "center_mode": g.center_mode, "max_assist_rate": g.max_assist_rate,
            "min_coverage": g.min_coverage, "trials": len(trials), "results": trials}


def _no_feasible_band(band: dict[str, Any]) -> str:
    """Why the guardrail found no band, with the most the grid could accept within the
    assist limit: the number a person needs to choose a min_coverage that works."""
    limit, wanted = band["max_assist_rate"], band["min_coverage"]
    within = [row for row in band["results"] if within_assist_limit(row["assist_rate"], limit)]
    widest = max(within, key=lambda row: row["coverage"], default=None)
    reach = (f"the most any band accepted within the assist limit was {widest['coverage']:.0%} "
             f"(center {widest['center']:g}, width {widest['width']:g})"
             if widest else "every band of the grid sent more than that to a person")
    return (f"policy guardrail: no band met max_assist_rate {limit:g} and min_coverage {wanted:g} on val_calib: "
            f"{reach}. The model is unsure of too much of val_calib: lower calibration.guardrail.min_coverage "
            "or the lowest of calibration.guardrail.centers, raise max_assist_rate, or train a surer model")


def policy_from(rule: str, temperature: float, results: dict[str, Any]) -> Policy:
    """The policy of the configured rule, from that tool's results."""
    if rule == "threshold":
        return Policy(temperature=temperature, rule="threshold", threshold=results["threshold"]["threshold"])
    if rule == "guardrail":
        band = results["guardrail"]
        if not band["feasible"]:
            raise CalibrationError(_no_feasible_band(band))
        return Policy(temperature=temperature, rule="guardrail", center=band["center"], width=band["width"])
    if rule == "risk_control":
        controlled = results["risk_control"]
        if not controlled["qualified"]:
            raise CalibrationError(f"policy risk_control: {controlled['message']}")
        return Policy(temperature=temperature, rule="risk_control", threshold=controlled["threshold"],
                      alpha=controlled["alpha"], delta=controlled["delta"])
    return Policy(temperature=temperature, rule="none")
