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

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch

from trainers.model import load_classifier
from trainers.preprocess import LABEL_KEY, MODEL_INPUTS, ImageSpec, TextSpec, model_inputs, preprocess_dataset

SPLIT_TAG = "split_name"


FEATURES_KEY = "features"


@dataclass(frozen=True)
class InferenceDevice:
    """Where the logits pass runs: `num_gpus` per Ray Data actor (0: CPUs), and the
    autocast dtype on a GPU (None: fp32), as the run trained."""

    num_gpus: float = 0.0
    precision: str = "fp32"
    actors: int = 1

    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.num_gpus > 0 and torch.cuda.is_available() else "cpu")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        if device.type != "cuda" or self.precision == "fp32":
            return None
        if self.precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if self.precision == "bf16" else torch.float16


class LogitsPredictor:
    """One Ray Data actor: the saved classifier loaded once, on the actor's GPU when it
    has one; uint8 images are normalised there."""

    def __init__(self, model_dir: str, spec: ImageSpec | TextSpec, where: InferenceDevice, features: bool = False,
                 keep: tuple[str, ...] = ()) -> None:
        self.device = where.torch_device()
        self.dtype = where.autocast_dtype(self.device)
        self.model = load_classifier(Path(model_dir))[0].to(self.device)
        self.spec, self.features, self.keep = spec, features, keep

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in batch.items()
                   if k in MODEL_INPUTS}
        inputs = model_inputs(tensors, self.spec)
        out = {LABEL_KEY: batch[LABEL_KEY], SPLIT_TAG: batch[SPLIT_TAG], **{k: batch[k] for k in self.keep}}
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext():
            if self.features:
                logits, features = self.model.logits_and_features(**inputs)
                out[FEATURES_KEY] = features.float().cpu().numpy()
            else:
                logits = self.model(**inputs)
        out["logits"] = logits.float().cpu().numpy()
        return out


def _tag(batch: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {**batch, SPLIT_TAG: np.full(len(batch["label_id"]), name, dtype=object)}


def logits_dataset(
    split_datasets: dict[str, Any], spec: ImageSpec | TextSpec, model_dir: Path, batch_size: int,
    where: InferenceDevice, features: bool = False, keep: tuple[str, ...] = (),
) -> ray.data.Dataset:
    """The logits pass as a lazy Ray Dataset: the splits tagged and preprocessed (uint8
    images), then an actor pool of `LogitsPredictor`s, each with `where.num_gpus` GPUs."""
    tagged = [
        ds.map_batches(_tag, fn_kwargs={"name": name}, batch_format="numpy")
        for name, ds in split_datasets.items()
    ]
    # Ray Data plans a union of one dataset as an error (its planner wants two inputs)
    combined = tagged[0] if len(tagged) == 1 else tagged[0].union(*tagged[1:])
    return preprocess_dataset(combined, spec, keep=(SPLIT_TAG, *keep)).map_batches(
        LogitsPredictor,
        fn_constructor_kwargs={"model_dir": str(model_dir), "spec": spec, "where": where, "features": features,
                               "keep": keep},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=where.actors),
        num_gpus=where.num_gpus,
        batch_format="numpy",
    )


def predict_outputs(
    split_datasets: dict[str, Any],
    spec: ImageSpec | TextSpec,
    model_dir: Path,
    batch_size: int,
    features: bool = False,
    keep: tuple[str, ...] = (),
    where: InferenceDevice | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"logits" [N, C] float32, "labels" [N] int64, "features" [N, hidden]
    float32 (with `features`), and each column named in `keep`}} for every row of each
    split, all arrays of a split in the same row order. `where`: GPUs and precision
    (default: one CPU actor, fp32)."""
    predicted = logits_dataset(split_datasets, spec, model_dir, batch_size, where or InferenceDevice(), features, keep)
    parts = list(predicted.iter_batches(batch_size=None, batch_format="numpy"))
    tags = np.concatenate([p[SPLIT_TAG] for p in parts])
    columns = {
        "logits": np.concatenate([p["logits"] for p in parts]).astype(np.float32),
        "labels": np.concatenate([p[LABEL_KEY] for p in parts]).astype(np.int64),
        **({FEATURES_KEY: np.concatenate([p[FEATURES_KEY] for p in parts]).astype(np.float32)} if features else {}),
        **{k: np.concatenate([p[k] for p in parts]) for k in keep},
    }
    return {name: {k: v[tags == name] for k, v in columns.items()} for name in split_datasets}
