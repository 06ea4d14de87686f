"""Stage orchestration: splits -> train (calibrate / evaluate / export come later).

Each stage checks its inputs before it writes anything, runs inside `Run.stage` (so
metadata says running / complete / failed with timings), and is skipped when it is
already complete for the same config fingerprint.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from typing import Any

import numpy as np
import ray
import ray.data

from ray_app.config import AppConfig
from ray_app.errors import UserError
from ray_app.runs import Run
from ray_app.sources import inspect_rows, raise_on_bad_rows, read_source
from ray_app.splits import SplitReader, plan_splits, write_splits
from trainers.baseline import LoopParams, fit_baseline
from trainers.checkpoint import selected_model
from trainers.model import build_classifier, save_classifier
from trainers.predict import predict_logits
from trainers.preprocess import ImageSpec, TextSpec, preprocess_dataset, resolve_image_spec, resolve_text_spec

FAIL_AT_EPOCH_ENV = "RAY_APP_FAIL_AT_EPOCH"
SPLITS_SECTIONS = ("seed", "data")


def init_ray(cfg: AppConfig) -> None:
    """Connect to the configured cluster (or RAY_ADDRESS, as under `ray job submit`),
    else start a local Ray in-process with room for the workers plus Ray Data."""
    if not sys.stdout.isatty():
        # Ray Data's progress bars become thousands of log lines without a terminal;
        # the stages print their own progress instead. Set before ray.init so the
        # local workers inherit it.
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    needed = math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker) + 1
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, needed)
    ray.init(num_cpus=num_cpus, include_dashboard=False)


# --- splits ---------------------------------------------------------------------------


def ensure_splits(cfg: AppConfig, run: Run, force: bool = False) -> SplitReader:
    fingerprint = cfg.fingerprint(*SPLITS_SECTIONS)
    if not force and run.stage_complete("splits", fingerprint):
        return SplitReader(run.splits_dir)
    # Read, check and plan everything before the run directory is touched: bad data
    # stops here and leaves nothing behind.
    source = cfg.data.source
    inspected = inspect_rows(read_source(source), source)
    index = inspected.select_columns(["content_hash", "label", "ref", "error"]).to_pandas()
    raise_on_bad_rows(index)
    plan = plan_splits(
        index["content_hash"].tolist(), index["label"].tolist(), cfg.data.splits, cfg.seed, source
    )
    run.prepare(cfg)
    with run.stage("splits", fingerprint) as details:
        write_splits(inspected, plan, run.splits_dir)
        details["counts"] = {s: v["count"] for s, v in plan.summary["splits"].items()}
        details["duplicates"] = plan.summary["duplicates"]
    return SplitReader(run.splits_dir)


# --- train ----------------------------------------------------------------------------


def resolve_input_spec(cfg: AppConfig) -> ImageSpec | TextSpec:
    try:
        if cfg.data.source.modality == "image":
            return resolve_image_spec(cfg.model)
        return resolve_text_spec(cfg.model)
    except (OSError, ValueError) as exc:
        where = cfg.model.backbone.id or "model.backbone.config"
        raise UserError(
            f"cannot prepare inputs for backbone '{where}': {exc}. A backbone id must be "
            "a local directory on hosts without hub access."
        ) from None


def _failure_injection() -> int | None:
    value = os.environ.get(FAIL_AT_EPOCH_ENV)
    return int(value) if value else None


def run_training(cfg: AppConfig, run: Run, reader: SplitReader) -> dict[str, Any]:
    """Train on Ray Train, keep the selected model, export val_calib / val_test logits."""
    summary = reader.summary()
    label_names: list[str] = summary["label_names"]
    spec = resolve_input_spec(cfg)
    with run.stage("train", cfg.fingerprint()) as details:
        # A new training never resumes an older one's checkpoints.
        shutil.rmtree(run.train_dir, ignore_errors=True)
        # Preprocess once and keep the tensors in the object store: every epoch then
        # iterates ready batches instead of re-reading and re-decoding the split.
        datasets = {
            s: preprocess_dataset(reader.read(s, "train"), spec).materialize()
            for s in ("train", "val_select")
        }
        params = LoopParams(
            model=cfg.model,
            training=cfg.training,
            num_labels=len(label_names),
            train_rows=summary["splits"]["train"]["count"],
            seed=cfg.seed,
            metrics_dir=str(run.train_dir.resolve()),
            fail_at_epoch=_failure_injection(),
        )
        fit = fit_baseline(params, datasets, cfg.scaling, run.train_dir / "ray_storage", run.name)

        model = selected_model(
            fit.best_checkpoint, build_classifier(cfg.model, len(label_names)), cfg.training.ema.enabled
        )
        model_dir = run.train_dir / "model"
        save_classifier(
            model,
            cfg.model,
            label_names,
            model_dir,
            extra={
                "preprocessing": spec.to_dict(),
                "selected_epoch": fit.best_epoch,
                "run": run.name,
                "splits_fingerprint": summary["source_fingerprint"],
            },
        )
        predictions_dir = run.train_dir / "predictions"
        predictions_dir.mkdir(parents=True, exist_ok=True)
        predictions = predict_logits(
            {s: reader.read(s, "predict") for s in ("val_calib", "val_test")},
            spec,
            model_dir,
            cfg.training.eval_batch_size,
        )
        for split, (logits, labels) in predictions.items():
            np.savez(predictions_dir / f"{split}.npz", logits=logits, labels=labels)

        best_row = next(r for r in fit.history if r["epoch"] == fit.best_epoch)
        details.update(
            epochs_run=len(fit.history),
            best_epoch=fit.best_epoch,
            best={k: v for k, v in best_row.items() if k.startswith("val_select/")},
            resumed_at=fit.resumed_at,
            predictions={s: list(lg.shape) for s, (lg, _) in predictions.items()},
            reads={stage: sorted(splits) for stage, splits in reader.reads.items()},
        )
    return run.stage_info("train")
