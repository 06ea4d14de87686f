"""Slow, obvious implementations that the fast production code is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def exhaustive_guardrail(
    confidence: np.ndarray, correct: np.ndarray, centers: list[float], widths: list[float],
    max_assist_rate: float, min_coverage: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every (c, w) evaluated in-process, no Ray: what the Tune sweep must find."""
    from calibration.guardrail import guardrail_metrics, select_best

    rows = [guardrail_metrics(confidence, correct, c, w, max_assist_rate, min_coverage) for c in centers for w in widths]
    return select_best(rows), rows


def predict_logits(split_datasets: dict[str, Any], spec: Any, model_dir: Path, batch_size: int) -> dict[str, Any]:
    """{split: (logits, labels)} through the production batch-inference pass."""
    from trainers.predict import predict_outputs

    outputs = predict_outputs(split_datasets, spec, model_dir, batch_size)
    return {name: (out["logits"], out["labels"]) for name, out in outputs.items()}


def tokenize(spec: Any, batch: dict[str, np.ndarray], keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Split rows tokenized as training tokenizes them (a tokenizer loaded afresh)."""
    from trainers.preprocess import load_tokenizer, tokenize_batch

    return tokenize_batch(load_tokenizer(spec), batch, spec, keep)
