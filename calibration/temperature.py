"""Temperature scaling: one T > 0 minimising the NLL of softmax(logits / T) on val_calib.

Fitted in log T with a bounded scalar search, so T stays positive and finite. The
known failure modes are refused with a reason instead of returning a silently bad T:
too few samples, non-finite logits, and T running to a bound (e.g. every calibration
sample correct, where the NLL keeps falling as T -> 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from calibration.metrics import mean_nll


class CalibrationError(ValueError):
    """Calibration cannot produce a trustworthy result from this data."""


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    min_temperature: float = 0.05,
    max_temperature: float = 20.0,
    min_samples: int = 50,
) -> float:
    n = len(labels)
    if n < min_samples:
        raise CalibrationError(
            f"val_calib has {n} samples; temperature scaling needs at least {min_samples}. "
            "Give val_calib a larger share (data.splits.ratios) or more data."
        )
    if not np.isfinite(logits).all():
        raise CalibrationError("val_calib logits contain NaN or inf: the model diverged")
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    if accuracy == 1.0:
        # The NLL then falls monotonically as T -> 0 (and underflows to exactly 0 long
        # before the bound): there is no evidence of over- or under-confidence to fit.
        raise CalibrationError(
            f"every one of the {n} calibration samples is classified correctly, so the NLL "
            "has no minimum in T. Use more or harder val_calib data, or set "
            "calibration.temperature.enabled: false."
        )
    low, high = math.log(min_temperature), math.log(max_temperature)
    result = minimize_scalar(
        lambda log_t: mean_nll(logits, labels, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = math.exp(float(result.x))
    margin = 1e-3 * (high - low)
    if result.x - low < margin or high - result.x < margin:
        raise CalibrationError(
            f"temperature ran to its bound (T = {temperature:.4g}, bounds "
            f"[{min_temperature}, {max_temperature}]): the NLL keeps falling towards it "
            f"(val_calib accuracy {accuracy:.3f}). Use more or harder val_calib data, widen "
            "the bounds, or set calibration.temperature.enabled: false."
        )
    return temperature
