"""Final metrics on val_test under a policy: what the model and its decisions do on
data that neither training nor calibration has seen."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from calibration.guardrail import ACCEPT, ASSIST
from calibration.metrics import calibration_summary, classification_summary
from calibration.policy import Policy


def evaluate_under_policy(
    logits: np.ndarray, labels: np.ndarray, policy: Policy, label_names: list[str], n_bins: int = 15
) -> dict[str, Any]:
    probs = policy.calibrated(logits)
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    correct = preds == labels
    decisions = policy.decide(confidence)
    accepted = decisions == ACCEPT
    n_accepted = int(accepted.sum())
    accepted_accuracy = float(correct[accepted].mean()) if n_accepted else None
    return {
        "n": int(len(labels)),
        **classification_summary(labels, preds),
        "calibrated": calibration_summary(logits, labels, policy.temperature, n_bins),
        "uncalibrated": calibration_summary(logits, labels, 1.0, n_bins),
        "confusion_matrix": {
            "labels": label_names,
            "matrix": confusion_matrix(labels, preds, labels=np.arange(len(label_names))).tolist(),
        },
        "policy": {
            "rule": policy.rule,
            "coverage": n_accepted / len(labels),
            "accepted": n_accepted,
            "accepted_accuracy": accepted_accuracy,
            "selective_risk": None if accepted_accuracy is None else 1.0 - accepted_accuracy,
            "assist_rate": float((decisions == ASSIST).mean()),
            "abstain_rate": float(1.0 - accepted.mean() - (decisions == ASSIST).mean()),
        },
    }
