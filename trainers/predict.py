"""Batch inference with Ray Data: logits of a saved classifier over splits.

Used after training to export the logits of val_calib and val_test from the selected
checkpoint. `map_batches` with an actor pool loads the model once per actor and
streams the rows through it, the way Ray Data's batch-inference docs do it. Several
splits go through in one pass (tagged by a column), so the model loads once. The same
pass can return the pooled features the logits came from (for a feature map of the
run) and columns of the split rows that identify them: the rows come back in no
particular order, so a row's identity must travel with its logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch

from trainers.model import load_classifier
from trainers.preprocess import LABEL_KEY, ImageSpec, TextSpec, model_inputs, preprocess_dataset

SPLIT_TAG = "split_name"


FEATURES_KEY = "features"


class LogitsPredictor:
    def __init__(self, model_dir: str, features: bool = False, keep: tuple[str, ...] = ()) -> None:
        self.model, _ = load_classifier(Path(model_dir))
        self.features = features
        self.keep = keep

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {k: torch.as_tensor(v) for k, v in model_inputs(batch).items()}
        out = {LABEL_KEY: batch[LABEL_KEY], SPLIT_TAG: batch[SPLIT_TAG], **{k: batch[k] for k in self.keep}}
        if self.features:
            logits, features = self.model.logits_and_features(**inputs)
            out[FEATURES_KEY] = features.float().numpy()
        else:
            logits = self.model(**inputs)
        out["logits"] = logits.float().numpy()
        return out


def _tag(batch: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {**batch, SPLIT_TAG: np.full(len(batch["label_id"]), name, dtype=object)}


def predict_outputs(
    split_datasets: dict[str, Any],
    spec: ImageSpec | TextSpec,
    model_dir: Path,
    batch_size: int,
    features: bool = False,
    keep: tuple[str, ...] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"logits" [N, C] float32, "labels" [N] int64, "features" [N, hidden]
    float32 (with `features`), and each column named in `keep`}} for every row of each
    split, all arrays of a split in the same row order."""
    tagged = [
        ds.map_batches(_tag, fn_kwargs={"name": name}, batch_format="numpy")
        for name, ds in split_datasets.items()
    ]
    # Ray Data plans a union of one dataset as an error (its planner wants two inputs)
    combined = tagged[0] if len(tagged) == 1 else tagged[0].union(*tagged[1:])
    predicted = preprocess_dataset(combined, spec, keep=(SPLIT_TAG, *keep)).map_batches(
        LogitsPredictor,
        fn_constructor_kwargs={"model_dir": str(model_dir), "features": features, "keep": keep},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="numpy",
    )
    parts = list(predicted.iter_batches(batch_size=None, batch_format="numpy"))
    tags = np.concatenate([p[SPLIT_TAG] for p in parts])
    columns = {
        "logits": np.concatenate([p["logits"] for p in parts]).astype(np.float32),
        "labels": np.concatenate([p[LABEL_KEY] for p in parts]).astype(np.int64),
        **({FEATURES_KEY: np.concatenate([p[FEATURES_KEY] for p in parts]).astype(np.float32)} if features else {}),
        **{k: np.concatenate([p[k] for p in parts]) for k in keep},
    }
    return {name: {k: v[tags == name] for k, v in columns.items()} for name in split_datasets}
