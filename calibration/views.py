"""The calibration results as plain, JSON-ready views: what a dashboard draws and what
the report's plots are drawn from, so the two can never disagree.

Every view is computed on val_calib, where the calibration was fitted:

- reliability: per equal-width confidence bin, the sample count next to accuracy and
  mean confidence, before and after temperature scaling. The counts are the point: an
  empty or tiny bin's accuracy says nothing, and must not be read as miscalibration.
- decision histogram: calibrated confidence per decision under the policy (accept /
  assist / abstain), with the rule's cut points.
- risk-coverage: selective risk against coverage over every candidate threshold, with
  the policy's own operating point.
- guardrail heat map: accepted accuracy for every (center, width) the sweep tried,
  infeasible cells marked, the chosen cell flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.guardrail import ABSTAIN, ACCEPT, ASSIST, band_edges
from calibration.metrics import reliability_bins
from calibration.policy import Policy

DECISIONS = (ACCEPT, ASSIST, ABSTAIN)
# A bin holding fewer samples than this is flagged: its accuracy is too noisy to judge
# calibration by (one sample is either 0% or 100% right).
MIN_BIN_COUNT = 10
# The decision histogram's bins: finer than the reliability bins, so the policy's cut
# points (often 0.05 apart) fall between bars rather than inside one.
DECISION_HISTOGRAM_BINS = 40


def _number(value: Any) -> float | None:
    """A float for JSON, None for NaN (an empty bin has no accuracy)."""
    value = float(value)
    return None if np.isnan(value) else value


def reliability_view(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, Any]:
    """One panel of the reliability diagram: every bin, empty ones included."""
    bins = reliability_bins(np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool), n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "n": int(len(confidence)),
        "bins": [
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": int(bins["count"][i]),
                "accuracy": _number(bins["accuracy"][i]),
                "confidence": _number(bins["confidence"][i]),
                "small": bool(bins["count"][i] < MIN_BIN_COUNT),
            }
            for i in range(n_bins)
        ],
    }


def policy_cuts(policy: Policy) -> dict[str, float]:
    """The confidences at which the policy's decision changes."""
    if policy.rule == "guardrail":
        assert policy.center is not None and policy.width is not None
        low, high = band_edges(policy.center, policy.width)
        return {"assist_from": low, "accept_from": high}
    if policy.rule in ("threshold", "risk_control"):
        assert policy.threshold is not None
        return {"accept_from": float(policy.threshold)}
    return {}


def decision_histogram_view(confidence: np.ndarray, decisions: np.ndarray, policy: Policy, n_bins: int) -> dict[str, Any]:
    """Counts of calibrated confidence per decision on shared bins; a decision the rule
    cannot make (assist without a band) is absent, not an empty series."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(np.asarray(confidence) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    possible = {
        "none": (ACCEPT,),
        "threshold": (ACCEPT, ABSTAIN),
        "risk_control": (ACCEPT, ABSTAIN),
        "guardrail": DECISIONS,
    }[policy.rule]
    return {
        "rule": policy.rule,
        "edges": [float(e) for e in edges],
        "cuts": policy_cuts(policy),
        "counts": {
            d: np.bincount(index[decisions == d], minlength=n_bins).astype(int).tolist() for d in possible
        },
        "totals": {d: int((decisions == d).sum()) for d in possible},
    }


def operating_point(policy: Policy, confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Where the policy sits on the risk-coverage plane of val_calib: the share it
    accepts and the error rate among what it accepts."""
    accepted = policy.decide(confidence) == ACCEPT
    n_accepted = int(accepted.sum())
    return {
        "rule": policy.rule,
        "coverage": n_accepted / max(len(confidence), 1),
        "selective_risk": None if n_accepted == 0 else float(1.0 - correct[accepted].mean()),
        "accepted": n_accepted,
    }


def risk_coverage_view(
    sweep: dict[str, np.ndarray], chosen: dict[str, Any], marks: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """The threshold sweep's curve (ordered by coverage), every rule's point, and the
    policy's operating point."""
    order = np.argsort(sweep["coverage"], kind="stable")
    return {
        "curve": [
            {
                "threshold": float(sweep["threshold"][j]),
                "coverage": float(sweep["coverage"][j]),
                "selective_risk": _number(sweep["selective_risk"][j]),
            }
            for j in order
        ],
        "rules": {name: {"coverage": c, "selective_risk": r} for name, (c, r) in marks.items()},
        "chosen": chosen,
    }


def guardrail_heatmap_view(
    rows: list[dict[str, Any]], chosen: dict[str, Any] | None, is_policy: bool
) -> dict[str, Any]:
    """The sweep's grid: centers × widths, each cell its accepted accuracy (None when
    the band accepts nothing), coverage, assist rate and feasibility. `cells[i][j]` is
    centers[i], widths[j]; a grid point the sweep did not try is None. `chosen` is the
    band the sweep picked (None when no band was feasible); `is_policy` says whether
    the run's policy uses it."""
    centers = sorted({float(r["center"]) for r in rows})
    widths = sorted({float(r["width"]) for r in rows})
    by_point = {(float(r["center"]), float(r["width"])): r for r in rows}
    cells: list[list[dict[str, Any] | None]] = []
    for c in centers:
        line: list[dict[str, Any] | None] = []
        for w in widths:
            r = by_point.get((c, w))
            line.append(
                None
                if r is None
                else {
                    "accepted_accuracy": float(r["accepted_accuracy"]) if r["accepted"] else None,
                    "coverage": float(r["coverage"]),
                    "assist_rate": float(r["assist_rate"]),
                    "feasible": bool(r["feasible"]),
                    "chosen": chosen is not None
                    and (c, w) == (float(chosen["center"]), float(chosen["width"])),
                }
            )
        cells.append(line)
    return {
        "centers": centers,
        "widths": widths,
        "cells": cells,
        "chosen": None if chosen is None else {"center": float(chosen["center"]), "width": float(chosen["width"])},
        "chosen_is_policy": bool(is_policy and chosen is not None),
    }


def build_views(
    *,
    uncalibrated: tuple[np.ndarray, np.ndarray],
    calibrated: tuple[np.ndarray, np.ndarray],
    policy: Policy,
    sweep: dict[str, np.ndarray],
    marks: dict[str, tuple[float, float]],
    guardrail: dict[str, Any] | None,
    n_bins: int,
) -> dict[str, Any]:
    """Every view of one calibration. `uncalibrated` / `calibrated` are (top-label
    confidence, correct) at T = 1 and at the fitted T; `guardrail` is the sweep's result
    (best band plus every trial under "results"), None when the sweep did not run."""
    confidence, correct = calibrated
    decisions = policy.decide(confidence)
    chosen_band = guardrail if guardrail and guardrail["feasible"] else None
    return {
        "split": "val_calib",
        "n": int(len(confidence)),
        "temperature": policy.temperature,
        "min_bin_count": MIN_BIN_COUNT,
        "reliability": {
            "before": reliability_view(*uncalibrated, n_bins),
            "after": reliability_view(*calibrated, n_bins),
        },
        "decision_histogram": decision_histogram_view(confidence, decisions, policy, DECISION_HISTOGRAM_BINS),
        "risk_coverage": risk_coverage_view(sweep, operating_point(policy, confidence, correct), marks),
        "guardrail": None
        if guardrail is None
        else guardrail_heatmap_view(guardrail["results"], chosen_band, policy.rule == "guardrail"),
    }
