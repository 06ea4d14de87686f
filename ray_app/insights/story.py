"""The storyboard: a few real val_test examples per outcome, chosen deterministically.

- confident_right: accepted by the policy and right, most confident first;
- confident_wrong: accepted and wrong, most confident first — the costliest errors,
  the ones nobody looks at because the policy let them through;
- assist: in the guardrail's band (sent to a person), most confident first;
- abstain: refused by the policy, least confident first;
- confused_pairs: the class pairs the model mixes up most (both directions of the
  val_test confusion matrix added up), each with its examples.

Ties are broken by id, so the same run always shows the same examples. Where the
policy cannot produce an outcome (no band: no assist; rule `none`: no abstain) the
category says so instead of being silently empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.guardrail import ABSTAIN, ACCEPT, ASSIST
from ray_app.insights.outcomes import Outcomes

CATEGORIES = ("confident_right", "confident_wrong", "assist", "abstain")
DESCRIPTIONS = {
    "confident_right": "accepted by the policy and right; most confident first",
    "confident_wrong": "accepted by the policy and wrong: the costliest errors; most confident first",
    "assist": "in the policy's assist band, sent to a person; most confident first",
    "abstain": "refused by the policy; least confident first",
}


def _unavailable(category: str, rule: str) -> str | None:
    if category == "assist" and rule != "guardrail":
        return f"policy rule '{rule}' has no assist band: it accepts or abstains, never sends to a person"
    if category == "abstain" and rule == "none":
        return "policy rule 'none' accepts every input: nothing is abstained on"
    return None


def category_mask(outcomes: Outcomes, category: str) -> np.ndarray:
    """Which rows belong to a category (the definition the tests check against)."""
    decisions, correct = outcomes.decisions, outcomes.correct
    return {
        "confident_right": (decisions == ACCEPT) & correct,
        "confident_wrong": (decisions == ACCEPT) & ~correct,
        "assist": decisions == ASSIST,
        "abstain": decisions == ABSTAIN,
    }[category]


def _ordered(outcomes: Outcomes, rows: np.ndarray, most_confident_first: bool) -> np.ndarray:
    """Rows by confidence (ties by id; outcomes are sorted by id, so by row index)."""
    confidence = outcomes.confidence[rows]
    key = -confidence if most_confident_first else confidence
    return rows[np.lexsort((rows, key))]


def confused_pairs(outcomes: Outcomes, top: int, per_pair: int) -> list[dict[str, Any]]:
    """The `top` unordered class pairs with the most confusions, each with examples of
    both directions (most confident first)."""
    n = len(outcomes.label_names)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (outcomes.labels, outcomes.predictions), 1)
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            total = int(matrix[a, b] + matrix[b, a])
            if total:
                pairs.append((total, a, b))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    result = []
    for total, a, b in pairs[:top]:
        rows = np.flatnonzero(
            ((outcomes.labels == a) & (outcomes.predictions == b)) | ((outcomes.labels == b) & (outcomes.predictions == a))
        )
        chosen = _ordered(outcomes, rows, most_confident_first=True)[:per_pair]
        names = outcomes.label_names
        result.append({
            "classes": [names[a], names[b]],
            "count": total,
            "directions": [
                {"label": names[a], "prediction": names[b], "count": int(matrix[a, b])},
                {"label": names[b], "prediction": names[a], "count": int(matrix[b, a])},
            ],
            "examples": [outcomes.row(int(i)) for i in chosen],
        })
    return result


def build_storyboard(outcomes: Outcomes, per_category: int, pairs: int) -> dict[str, Any]:
    categories: dict[str, Any] = {}
    for category in CATEGORIES:
        reason = _unavailable(category, outcomes.rule)
        rows = np.flatnonzero(category_mask(outcomes, category))
        chosen = _ordered(outcomes, rows, most_confident_first=category != "abstain")[:per_category]
        categories[category] = {
            "available": reason is None,
            "reason": reason,
            "description": DESCRIPTIONS[category],
            "count": int(len(rows)),
            "examples": [outcomes.row(int(i)) for i in chosen],
        }
    return {
        "split": "val_test",
        "rule": outcomes.rule,
        "n": len(outcomes),
        "model_sha256": outcomes.model_sha256,
        "label_names": outcomes.label_names,
        "categories": categories,
        "confused_pairs": confused_pairs(outcomes, pairs, per_category),
    }
