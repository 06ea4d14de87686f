"""A simple reference model, to answer "is the deep model worth it?".

scikit-learn logistic regression on the same `train` split: TF-IDF of word 1-2 grams for
text, the raw pixels (resized to at most `insights.reference.image_side`, scaled to
[0, 1], standardised) for images. Its one setting, C, is chosen on `val_select` as the
deep model's checkpoint is; `val_test` scores the chosen model once. It reads through
the split contract as stage `reference` (train, val_select, val_test — never
val_calib).
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from typing import Any

import numpy as np
from PIL import Image

from ray_app.config import AppConfig, ReferenceConfig
from ray_app.splits import SplitReader

READER = "reference"


def _sample(table: Any, max_rows: int, seed: int) -> Any:
    """At most `max_rows` rows, chosen by a seeded hash of their content (independent
    of file order)."""
    if table.num_rows <= max_rows:
        return table
    hashes = table.column("content_hash").to_pylist()
    ranks = np.array([hashlib.sha256(f"{seed}:{h}:{i}".encode()).hexdigest() for i, h in enumerate(hashes)])
    return table.take(np.sort(np.argsort(ranks, kind="stable")[:max_rows]))


def pixel_features(images: list[bytes], channels: int, side: int) -> np.ndarray:
    """Each image decoded to the model's channel count, resized to side × side and
    scaled to [0, 1], flattened."""
    rows = []
    for content in images:
        with Image.open(io.BytesIO(content)) as image:
            picture = image.convert("L" if channels == 1 else "RGB")
            if picture.size != (side, side):
                picture = picture.resize((side, side), Image.Resampling.BILINEAR)
            rows.append(np.asarray(picture, dtype=np.float32).reshape(-1) / 255.0)
    return np.stack(rows)


def fit_reference(
    reader: SplitReader, modality: str, config: ReferenceConfig, seed: int,
    image_size: int | None = None, channels: int = 1,
) -> dict[str, Any]:
    """Fit on train for every C, keep the best on val_select, score val_test once."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.monotonic()
    column = "image" if modality == "image" else "text"
    tables = {
        split: reader.read_table(split, READER, columns=[column, "label_id", "content_hash"])
        for split in ("train", "val_select", "val_test")
    }
    tables["train"] = _sample(tables["train"], config.max_train_rows, seed)
    labels = {s: np.asarray(t.column("label_id").to_numpy(), dtype=np.int64) for s, t in tables.items()}
    if modality == "image":
        side = min(int(image_size or config.image_side), config.image_side)
        inputs = {s: pixel_features(t.column("image").to_pylist(), channels, side) for s, t in tables.items()}
        kind = f"logistic regression on pixels ({side}x{side}, {channels} channel{'s' if channels > 1 else ''})"

        def make(c: float) -> Any:
            return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    else:
        inputs = {s: [str(x) for x in t.column("text").to_pylist()] for s, t in tables.items()}
        kind = "logistic regression on TF-IDF (word 1-2 grams)"

        def make(c: float) -> Any:
            return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=c, max_iter=2000))

    tried = []
    best: tuple[float, Any] | None = None
    with warnings.catch_warnings():
        # A C that does not converge in max_iter is still a fair, if weaker, candidate.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(config.c_values):
            model = make(c).fit(inputs["train"], labels["train"])
            accuracy = float(accuracy_score(labels["val_select"], model.predict(inputs["val_select"])))
            tried.append({"C": c, "val_select_accuracy": accuracy})
            if best is None or accuracy > best[0]:  # ties keep the smaller C (more regularised)
                best = (accuracy, (c, model))
    assert best is not None
    chosen_c, model = best[1]
    predicted = model.predict(inputs["val_test"])
    features = model[0].transform(inputs["train"][:1]).shape[1]
    return {
        "kind": kind,
        "modality": modality,
        "C": chosen_c,
        "tried": tried,
        "features": int(features),
        "train_rows": int(len(labels["train"])),
        "val_select_accuracy": best[0],
        "val_test_accuracy": float(accuracy_score(labels["val_test"], predicted)),
        "val_test_macro_f1": float(f1_score(labels["val_test"], predicted, average="macro", zero_division=0)),
        "n_val_test": int(len(labels["val_test"])),
        "seconds": round(time.monotonic() - started, 3),
    }


def advice_when_behind(
    model_accuracy: float, reference_accuracy: float, cfg: AppConfig, epochs_run: int, best_epoch: int,
) -> str | None:
    """One line saying what to try when the model does not beat the reference; None when
    it does. The first that applies: the model was still improving when training ended
    (train longer); the learning rate was not searched (lr: auto); the backbone starts
    from random weights (a pretrained one); else another backbone or mode."""
    if model_accuracy > reference_accuracy:
        return None
    training = cfg.training
    pretrained = cfg.model.backbone.id is not None
    behind = f"{reference_accuracy - model_accuracy:.3f} behind the reference"
    if epochs_run == training.epochs and best_epoch >= epochs_run - 2:
        return f"{behind} and still improving at its last epoch: train longer (-o training.epochs={2 * training.epochs})"
    if training.lr != "auto":
        other = "" if pretrained else ", or start from a pretrained backbone (model.backbone.id)"
        return f"{behind}: let a range test choose the learning rate (-o training.lr=auto){other}"
    if not pretrained:
        return f"{behind}: start from a pretrained backbone (model.backbone.id, configs/*_finetune.yaml)"
    other_mode = "peft" if training.mode == "baseline" else "baseline"
    return f"{behind}: try another pretrained backbone, or training.mode: {other_mode}"
