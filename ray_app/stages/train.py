"""Stage `train`: Ray Train on the run's `train` split, checkpoints chosen on
`val_select`; then the selected model saved, and the logits of `val_calib` and `val_test`
exported by Ray Data batch inference (with val_test's pooled features and row ids, for
the run's insights).

    run_training(ctx)
        _record_budget       the compute budget, estimated before training (optional)
        _find_lr             lr: auto -> a learning-rate range test picks it (trainers.lr_range)
        _fit                 trainers.train_loop.fit_classifier: one TorchTrainer
        _save_selected       the selected (EMA, adapters merged) weights -> train/model
        _export_predictions  val_calib / val_test logits -> train/predictions
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray.data

from ray_app.budget import compute_budget
from ray_app.errors import NotReady
from ray_app.failure_reporter import FailureReporter
from ray_app.runs import write_json
from ray_app.stages import TRAIN
from ray_app.stages.context import StageContext
from trainers.checkpoint import selected_model
from trainers.config import ModelConfig, TrainingConfig
from trainers.lr_range import LrRangeResult, plot_lr_range, run_lr_range_test
from trainers.model import (
    WEIGHTS_FILE,
    InitBackbone,
    build_classifier,
    build_initial_classifier,
    file_sha256,
    save_classifier,
)
from trainers.predict import predict_outputs
from trainers.preprocess import ImageSpec, TextSpec, preprocess_dataset
from trainers.train_loop import EpochStart, FitResult, LoopParams, fit_classifier

logger = logging.getLogger(__name__)

TRAINING_SPLITS = ("train", "val_select")
PREDICTED_SPLITS = ("val_calib", "val_test")


def run(ctx: StageContext) -> dict[str, Any]:
    return run_training(ctx, record_budget=True)


# Materialised training data may fill at most this share of the object store; more
# streams instead, as Ray's guidance for data larger than memory says.
MATERIALIZE_SHARE = 0.5


def data_placement(ctx: StageContext) -> dict[str, Any]:
    """Whether train and val_select are preprocessed once and kept in the object store
    (every epoch then iterates ready batches) or streamed from their files every epoch
    (when they would not fit): the preprocessed size, estimated from the row counts and
    the input spec, against the object store's memory."""
    import ray

    summary = ctx.splits.summary()
    rows = sum(summary["splits"][s]["count"] for s in TRAINING_SPLITS)
    spec = ctx.input_spec
    per_row = (spec.num_channels * spec.image_size ** 2 if isinstance(spec, ImageSpec) else spec.max_length * 16) + 8
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    estimated = rows * per_row
    return {"rows": rows, "estimated_mb": round(estimated / 2**20, 2), "object_store_mb": round(store / 2**20, 1),
            "materialized": estimated <= MATERIALIZE_SHARE * store}


def prepare_training_data(ctx: StageContext) -> dict[str, ray.data.Dataset]:
    """train and val_select preprocessed once (uint8 images) and kept in the object store
    when they fit (`data_placement`), else streamed and preprocessed every epoch."""
    placement = data_placement(ctx)
    logger.info(f"training data: {placement['rows']:,} rows, ~{placement['estimated_mb']:,} MiB preprocessed, "
                f"object store {placement['object_store_mb']:,} MiB: "
                + ("preprocessed once and kept" if placement["materialized"] else "streamed every epoch"))
    datasets = {s: preprocess_dataset(ctx.splits.read(s, TRAIN.name), ctx.input_spec) for s in TRAINING_SPLITS}
    return {s: d.materialize() for s, d in datasets.items()} if placement["materialized"] else datasets


def run_training(
    ctx: StageContext,
    prepared: dict[str, ray.data.Dataset] | None = None,
    callbacks: list[Any] | None = None,
    record_budget: bool = False,
    before_epoch: Callable[[EpochStart], None] | None = None,
) -> dict[str, Any]:
    """Train, keep the selected model, export the val_calib / val_test logits.

    A sweep passes `prepared` (its trials share one preprocessed copy of the splits)
    and `callbacks` (Ray Train callbacks, e.g. the one reporting to Tune).
    `record_budget`: estimate the epoch time first (`ray_app.budget`, cached) and
    record it with the measured one; a sweep's trials leave it off, since they share
    the machine with each other and the estimate would time the contention.
    `before_epoch` runs on every worker at the start of every epoch (a test's fault)."""
    ctx.check()
    run = ctx.run
    if not ctx.splits.summary_path.is_file():
        raise NotReady(f"run '{run.name}' has no splits ({run.splits_dir}); make them first: ray-app splits <config>")
    with run.stage(TRAIN.name, TRAIN.fingerprint(ctx.cfg)) as details:
        # A new training never resumes an older one's checkpoints.
        shutil.rmtree(run.train.root, ignore_errors=True)
        budget = _record_budget(ctx, details) if record_budget else None
        if prepared is None:
            details["data"] = data_placement(ctx)
            prepared = prepare_training_data(ctx)
        training = _find_lr(ctx, prepared["train"], details) if ctx.cfg.training.lr == "auto" else ctx.cfg.training
        fit = _fit(ctx, prepared, training, callbacks, before_epoch, details)
        model_dir = _save_selected(ctx, fit, details.get("init_from"))
        outputs = _export_predictions(ctx, model_dir)
        best_row = next(r for r in fit.history if r["epoch"] == fit.best_epoch)
        details.update(
            epochs_run=len(fit.history),
            best_epoch=fit.best_epoch,
            best={k: v for k, v in best_row.items() if k.startswith("val_select/")},
            resumed_at=fit.resumed_at,
            predictions={s: list(out["logits"].shape) for s, out in outputs.items()},
            reads={stage: sorted(splits) for stage, splits in ctx.splits.reads.items()},
        )
        if budget is not None:
            details["epoch_seconds"] = epoch_seconds(budget["estimate"]["epoch_train_seconds"], fit.history)
    return run.stage_info(TRAIN.name)


def _record_budget(ctx: StageContext, details: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    budget = compute_budget(ctx.cfg, ctx.splits)
    write_json(ctx.run.train.budget, budget)
    details["budget"] = {
        "key": budget["key"], "cached": budget["cached"], "seconds": round(time.monotonic() - started, 3),
        "epoch_train_seconds": budget["estimate"]["epoch_train_seconds"],
        "flops_per_epoch": budget["flops"]["per_epoch"],
        "parameters": budget["parameters"]["total"], "trainable": budget["parameters"]["trainable"],
    }
    return budget


def _find_lr(ctx: StageContext, train: ray.data.Dataset, details: dict[str, Any]) -> TrainingConfig:
    """Run the range test where a worker would train (a Ray task with a worker's CPUs,
    and its GPU when the run trains on GPUs), record its curve and plot, and return the
    training settings with the learning rate it chose."""
    cfg, run = ctx.cfg, ctx.run
    started = time.monotonic()
    logger.info(f"lr auto: a {cfg.training.lr_range_steps}-step learning-rate range test on the train split")
    task = ray.remote(_lr_range_task).options(
        num_cpus=cfg.scaling.cpus_per_worker, num_gpus=1 if cfg.scaling.use_gpu else 0)
    result = ray.get(task.remote(cfg.model, cfg.training, len(ctx.splits.summary()["label_names"]), cfg.seed,
                                 ctx.input_spec, ctx.init_backbone, train))
    write_json(run.train.lr_range, result.to_dict())
    plot_lr_range(result, run.train.lr_range_plot, f"{run.name}: learning-rate range test")
    details["lr_auto"] = {"chosen": result.suggested_lr, "steps": result.steps_run, "rule": result.rule,
                          "seconds": round(time.monotonic() - started, 2)}
    logger.info(f"lr auto: chose {result.suggested_lr:.3g} ({result.rule}, {result.steps_run} steps)")
    return cfg.training.with_lr(result.suggested_lr)


def _lr_range_task(model_cfg: ModelConfig, training: TrainingConfig, num_labels: int, seed: int,
                   spec: ImageSpec | TextSpec, init: InitBackbone | None, train: ray.data.Dataset) -> LrRangeResult:
    import torch

    from trainers.adapters import PeftSetup

    torch.manual_seed(seed)  # the initial weights training starts from
    if training.mode == "peft" and training.peft is not None:
        model = PeftSetup(model=model_cfg, peft=training.peft, num_labels=num_labels, seed=seed,
                          init_backbone=init).build()
    else:
        model = build_initial_classifier(model_cfg, num_labels, init)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    batches = train.iter_torch_batches(batch_size=training.batch_size, device=device, local_shuffle_buffer_size=
                                       max(256, 4 * training.batch_size), local_shuffle_seed=seed)
    return run_lr_range_test(model, iter(batches), training, spec, steps=training.lr_range_steps, seed=seed)


def _fit(
    ctx: StageContext, datasets: dict[str, ray.data.Dataset], training: TrainingConfig, callbacks: list[Any] | None,
    before_epoch: Callable[[EpochStart], None] | None, details: dict[str, Any],
) -> FitResult:
    cfg, run, init = ctx.cfg, ctx.run, ctx.init_backbone
    summary = ctx.splits.summary()
    if ctx.peft_plan is not None and cfg.training.peft is not None:
        logger.info(f"peft {cfg.training.peft.method} r={cfg.training.peft.r}: {ctx.peft_plan.describe()}")
    if init is not None:
        # The fingerprint holds the name, not the weights: record which weights, since
        # retraining the source run changes them under the same name.
        details["init_from"] = {"run": Path(init.model_dir).parent.parent.name, "model": init.model_dir,
                                "weights_sha256": init.weights_sha256}
    params = LoopParams(
        model=cfg.model, training=training, num_labels=len(summary["label_names"]),
        train_rows=summary["splits"]["train"]["count"], seed=cfg.seed, history=run.train.history_files(),
        input_spec=ctx.input_spec, init_backbone=init, before_epoch=before_epoch,
    )
    # Each worker failure: one event for the console's line, Ray's account in the run's log.
    reporter = FailureReporter(failures_file=str(run.train.failures.resolve()), log_file=str(run.log_path.resolve()),
                               keep_ray_records=ctx.console.verbose)
    return fit_classifier(params, datasets, cfg.scaling, run.train.ray_storage, run.name,
                          callbacks=[*(callbacks or []), reporter])


def _save_selected(ctx: StageContext, fit: FitResult, init_from: dict[str, Any] | None) -> Path:
    """The selected checkpoint's weights (EMA when on, adapters merged) as a plain
    classifier directory that later stages and the bundle load without peft."""
    cfg, run = ctx.cfg, ctx.run
    summary = ctx.splits.summary()
    label_names: list[str] = summary["label_names"]
    model = selected_model(fit.best_checkpoint, build_classifier(cfg.model, len(label_names)), cfg.training.ema.enabled)
    save_classifier(model, cfg.model, label_names, run.train.model_dir, extra={
        "preprocessing": ctx.input_spec.to_dict(), "selected_epoch": fit.best_epoch, "run": run.name,
        "splits_fingerprint": summary["source_fingerprint"], "init_from": init_from,
    })
    return run.train.model_dir


def _export_predictions(ctx: StageContext, model_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    outputs = predict_outputs(
        {s: ctx.splits.read(s, "predict") for s in PREDICTED_SPLITS},
        ctx.input_spec, model_dir, ctx.cfg.training.eval_batch_size, features=True, keep=("content_hash", "ref"),
        where=ctx.inference_device,
    )
    calib = ctx.run.train.predictions("val_calib")
    calib.parent.mkdir(parents=True, exist_ok=True)
    np.savez(calib, logits=outputs["val_calib"]["logits"], labels=outputs["val_calib"]["labels"])
    save_val_test_predictions(outputs["val_test"], ctx.run.train.predictions("val_test"), model_dir)
    return outputs


def save_val_test_predictions(out: dict[str, np.ndarray], path: Path, model_dir: Path) -> None:
    """val_test's logits and labels, with what the run's insights need beside them: the
    pooled features, a stable id per row and its content hash, and the sha256 of the
    weights that produced them. Rows are sorted by id, so the file does not depend on
    the order Ray Data returned them in."""
    from ray_app.insights.outcomes import unique_row_ids

    ids = unique_row_ids(out["content_hash"], out["labels"], out["ref"])
    order = np.argsort(ids, kind="stable")
    np.savez(
        path,
        logits=out["logits"][order],
        labels=out["labels"][order],
        features=out["features"][order],
        ids=ids[order],
        content_hashes=np.asarray(out["content_hash"], dtype=str)[order],
        model_sha256=np.array(file_sha256(model_dir / WEIGHTS_FILE)),
    )


def epoch_seconds(estimated: float, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The estimated epoch time beside the measured one (metrics' train/seconds: the
    training steps of an epoch). The first epoch streams from Ray Data and warms up,
    so the comparison uses the median of the later ones (the first when it is all)."""
    measured = [float(r["train/seconds"]) for r in history]
    later = measured[1:] or measured
    median = float(np.median(later)) if later else None
    return {
        "estimated": round(estimated, 4),
        "measured_median": None if median is None else round(median, 4),
        "measured_first": round(measured[0], 4) if measured else None,
        "ratio": None if not median or not estimated else round(median / estimated, 3),
    }
