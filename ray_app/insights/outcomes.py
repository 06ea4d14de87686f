"""What the run's final model did with each val_test row: the table every insight is
built from (feature map, storyboard, examples).

Rows are named by an id derived from their content hash, label and source reference,
so an id means the same row whatever order Ray Data returned the rows in. Rows that
agree in all three are the same example in every respect (same input, same label,
hence the same prediction); they get `~1`, `~2`... suffixes so that every id in a run
is unique.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.policy import Policy
from ray_app.errors import InsightsNotReady
from ray_app.runs import Run
from ray_app.splits import check_access

ID_LENGTH = 12
DUPLICATE_MARK = "~"
READER = "insights"  # the split-contract stage of everything in this package


def row_id(content_hash: str, label_id: int, ref: str) -> str:
    """The base id of a split row (before duplicate suffixes)."""
    return hashlib.sha256(f"{content_hash}\t{int(label_id)}\t{ref}".encode()).hexdigest()[:ID_LENGTH]


def unique_row_ids(content_hashes: np.ndarray, label_ids: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """One id per row, unique within the rows given: identical rows get suffixes in
    the order given (they are interchangeable, so which gets which does not matter)."""
    base = [row_id(str(h), int(y), str(r)) for h, y, r in zip(content_hashes, label_ids, refs, strict=True)]
    seen: Counter[str] = Counter()
    ids = []
    for value in base:
        ids.append(value if seen[value] == 0 else f"{value}{DUPLICATE_MARK}{seen[value]}")
        seen[value] += 1
    return np.array(ids, dtype=str)


def base_id(example_id: str) -> str:
    return example_id.split(DUPLICATE_MARK, 1)[0]


def load_val_test(run: Run, *keys: str) -> dict[str, np.ndarray]:
    """Arrays of the exported val_test predictions (the split contract applies to them
    as to the split itself: this package may read val_test only)."""
    check_access("val_test", READER)
    path = run.train.predictions("val_test")
    if not path.is_file():
        raise InsightsNotReady(f"run '{run.name}' has no val_test predictions ({path}); train it first: ray-app train <config>")
    with np.load(path, allow_pickle=False) as saved:
        missing = [k for k in keys if k not in saved.files]
        if missing:
            raise InsightsNotReady(
                f"run '{run.name}' was trained before its val_test predictions carried {missing}; "
                f"train it again (ray-app train <config>) to get its insights"
            )
        return {k: saved[k] for k in keys}


@dataclass(frozen=True)
class Outcomes:
    """Per val_test row, sorted by id: the true label, the prediction, its calibrated
    confidence and the policy's decision."""

    ids: np.ndarray
    content_hashes: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    confidence: np.ndarray
    decisions: np.ndarray
    label_names: list[str]
    rule: str
    model_sha256: str

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predictions

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, index: int) -> dict[str, Any]:
        """One row as the API shows it: class names, not indices."""
        return {
            "id": str(self.ids[index]),
            "label": self.label_names[int(self.labels[index])],
            "prediction": self.label_names[int(self.predictions[index])],
            "confidence": round(float(self.confidence[index]), 6),
            "decision": str(self.decisions[index]),
            "correct": bool(self.labels[index] == self.predictions[index]),
        }

    def index_of(self) -> dict[str, int]:
        return {str(x): i for i, x in enumerate(self.ids)}

    @classmethod
    def compute(cls, run: Run, policy: Policy, label_names: list[str]) -> Outcomes:
        saved = load_val_test(run, "logits", "labels", "ids", "content_hashes", "model_sha256")
        probs = policy.calibrated(saved["logits"])
        confidence = probs.max(axis=1)
        order = np.argsort(saved["ids"], kind="stable")
        return cls(
            ids=saved["ids"][order],
            content_hashes=saved["content_hashes"][order],
            labels=saved["labels"][order].astype(np.int64),
            predictions=probs.argmax(axis=1)[order].astype(np.int64),
            confidence=confidence[order],
            decisions=np.asarray(policy.decide(confidence), dtype=str)[order],
            label_names=list(label_names),
            rule=policy.rule,
            model_sha256=str(saved["model_sha256"]),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp, ids=self.ids, content_hashes=self.content_hashes, labels=self.labels,
            predictions=self.predictions, confidence=self.confidence, decisions=self.decisions,
            label_names=np.array(self.label_names, dtype=str), rule=np.array(self.rule),
            model_sha256=np.array(self.model_sha256),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, run: Run) -> Outcomes:
        """The outcomes the insights stage saved, refused when they are older than the
        model whose val_test predictions are now in the run (it was retrained since)."""
        path = run.insights.outcomes
        if not path.is_file():
            raise InsightsNotReady(
                f"run '{run.name}' has no insights yet ({path}); make them with: ray-app insights {run.name} "
                "(or ray-app run <config>)"
            )
        with np.load(path, allow_pickle=False) as saved:
            outcomes = cls(
                ids=saved["ids"], content_hashes=saved["content_hashes"], labels=saved["labels"],
                predictions=saved["predictions"], confidence=saved["confidence"], decisions=saved["decisions"],
                label_names=[str(x) for x in saved["label_names"]], rule=str(saved["rule"]),
                model_sha256=str(saved["model_sha256"]),
            )
        current = str(load_val_test(run, "model_sha256")["model_sha256"])
        if current != outcomes.model_sha256:
            raise InsightsNotReady(
                f"run '{run.name}': its insights describe an earlier model (weights {outcomes.model_sha256[:12]}, "
                f"now {current[:12]}); make them again with: ray-app insights {run.name}"
            )
        return outcomes
