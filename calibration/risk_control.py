"""Risk control by Learn-then-Test (Angelopoulos et al., 2021).

For each candidate threshold tau the null hypothesis is "selective risk (errors among
accepted) > alpha". Its exact binomial-tail p-value is P(Binomial(n, alpha) <= k) for
k errors among n accepted calibration samples. Testing runs in a fixed sequence from
the strictest threshold to the loosest and stops at the first candidate it cannot
reject at level delta; the loosest rejected candidate is certified: its true selective
risk is <= alpha with probability >= 1 - delta. Candidates that accept fewer than
`min_accepted` samples are skipped (they have no power and would end the sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import beta, binom

from calibration.threshold import accepted_and_correct, candidate_thresholds


def clopper_pearson_upper(errors: np.ndarray | int, n: np.ndarray | int, delta: float) -> np.ndarray:
    """One-sided (1 - delta) Clopper-Pearson upper bound on an error rate."""
    errors, n = np.asarray(errors, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(1.0 - delta, errors + 1.0, n - errors)
    return np.where(errors >= n, 1.0, bound)


def binomial_tail_pvalue(errors: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    return binom.cdf(errors, n, alpha)


@dataclass
class RiskControlResult:
    alpha: float
    delta: float
    threshold: float | None
    qualified: bool
    message: str
    table: list[dict[str, Any]] = field(default_factory=list)
    calib_coverage: float | None = None
    calib_selective_risk: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def learn_then_test(
    confidence: np.ndarray,
    correct: np.ndarray,
    alpha: float,
    delta: float,
    min_accepted: int = 30,
    num_candidates: int = 200,
) -> RiskControlResult:
    thresholds = candidate_thresholds(confidence, num_candidates)
    accepted, right = accepted_and_correct(confidence, correct, thresholds)
    errors = accepted - right
    p_values = binomial_tail_pvalue(errors, accepted, alpha)
    upper = clopper_pearson_upper(errors, accepted, delta)

    table: list[dict[str, Any]] = []
    certified: int | None = None
    testing = True
    for j in range(len(thresholds) - 1, -1, -1):  # strictest first
        row = {
            "threshold": float(thresholds[j]),
            "accepted": int(accepted[j]),
            "errors": int(errors[j]),
            "p_value": float(p_values[j]),
            "risk_upper_bound": float(upper[j]) if accepted[j] else 1.0,
            "status": "skipped" if accepted[j] < min_accepted else "untested",
        }
        if testing and accepted[j] >= min_accepted:
            if p_values[j] <= delta:
                row["status"] = "certified"
                certified = j
            else:
                row["status"] = "not rejected"
                testing = False
        table.append(row)

    if certified is None:
        most = int(accepted.max())
        return RiskControlResult(
            alpha, delta, None, False,
            f"no threshold qualifies: no candidate keeping >= {min_accepted} of {len(confidence)} "
            f"val_calib samples has selective error <= {alpha} at confidence {1 - delta:.0%} "
            f"(largest accepted set {most}). Raise alpha or delta, or add calibration data.",
            table,
        )
    return RiskControlResult(
        alpha, delta, float(thresholds[certified]), True,
        f"threshold {thresholds[certified]:.4f} certified: selective error <= {alpha} with "
        f"probability >= {1 - delta:.0%}",
        table,
        calib_coverage=float(accepted[certified] / len(confidence)),
        calib_selective_risk=float(errors[certified] / accepted[certified]),
    )
