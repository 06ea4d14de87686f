"""The training recipe on Ray Train: setup -> train loop -> validate -> save.

`train_loop_per_worker` runs on every worker. It builds the classifier from the same
seed on every rank, wraps it for DDP, and each epoch: trains on its shard of `train`,
validates on `val_select` (batches spread over ranks, predictions gathered), picks the
best epoch by the early-stopping metric, and reports a checkpoint from rank 0. A
restarted worker group finds the latest checkpoint with `ray.train.get_checkpoint()`
and continues from the epoch after it, so a killed worker costs at most one epoch.

`training.mode: peft` runs the same loop on a classifier whose backbone carries peft
adapters (trainers.adapters): only the trainable tensors are optimised and
checkpointed, and the frozen base is rebuilt from the seed on resume.

`fit_baseline` is the driver side: one TorchTrainer, then the selected checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_cosine_schedule_with_warmup

from trainers.adapters import PeftSetup, check_peft_setup
from trainers.checkpoint import load_checkpoint, read_state, save_checkpoint
from trainers.config import ModelConfig, ScalingConfig, TrainingConfig
from trainers.model import Classifier, InitBackbone, build_initial_classifier
from trainers.preprocess import LABEL_KEY, model_inputs

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PROGRESS_JSON = "progress.json"


@dataclass
class LoopParams:
    """Everything a worker needs; passed as the TorchTrainer's train_loop_config."""

    model: ModelConfig
    training: TrainingConfig
    num_labels: int
    train_rows: int
    seed: int
    metrics_dir: str
    # model.init_from resolved on the driver: the saved model whose backbone weights
    # replace the freshly built backbone before training (and before adapters).
    init_backbone: InitBackbone | None = None
    # Test hook: the first attempt's workers exit hard at the start of this epoch,
    # to prove that a restarted group resumes from its last checkpoint.
    fail_at_epoch: int | None = None


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_checkpoint: Path
    resumed_at: list[int] = field(default_factory=list)


# --- helpers ------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not biases or norm scales (the usual AdamW recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means fp32. Mixed precision is for GPUs; CPU training stays fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def write_metrics_history(history: list[dict[str, Any]], directory: Path) -> None:
    """One row per epoch, as JSON lines and CSV (rewritten whole, so a resumed run
    never holds an epoch twice)."""
    directory.mkdir(parents=True, exist_ok=True)
    jsonl_tmp = directory / f".{METRICS_JSONL}.tmp"
    jsonl_tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
    jsonl_tmp.replace(directory / METRICS_JSONL)
    columns = list(dict.fromkeys(key for row in history for key in row))
    csv_tmp = directory / f".{METRICS_CSV}.tmp"
    with csv_tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    csv_tmp.replace(directory / METRICS_CSV)


class ProgressFile:
    """Rank 0's position inside the current epoch (`progress.json` next to the metrics),
    for the console's progress bar and anyone watching the run: rewritten atomically,
    at most every `interval_s`, so a step costs nothing measurable."""

    def __init__(self, directory: Path, epochs: int, steps: int, interval_s: float = 0.5) -> None:
        self.path = directory / PROGRESS_JSON
        self.epochs, self.steps, self.interval_s = epochs, steps, interval_s
        self.epoch_started = time.time()
        self.last_write = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch_started = time.time()
        self.update(epoch, 0, None, force=True)

    def update(self, epoch: int, step: int, loss: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.interval_s:
            return
        self.last_write = now
        state = {
            "epoch": epoch, "epochs": self.epochs, "step": step, "steps": self.steps, "loss": loss,
            "epoch_started": self.epoch_started, "updated": time.time(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{PROGRESS_JSON}.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)


@torch.no_grad()
def evaluate(
    model: Classifier, dataset: Any, batch_size: int, device: torch.device, dtype: torch.dtype | None
) -> dict[str, float]:
    """val_select metrics. Every rank reads the whole (small) split but runs the model
    on every world_size-th batch only; predictions are gathered so each rank computes
    the same exact metrics as a single process would."""
    rank, world = dist.get_rank() if dist.is_initialized() else 0, dist.get_world_size() if dist.is_initialized() else 1
    model.eval()
    labels, preds, losses = [], [], []
    for index, batch in enumerate(dataset.iter_torch_batches(batch_size=batch_size, device=device)):
        if index % world != rank:
            continue
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = model(**model_inputs(batch)).float()
        target = batch[LABEL_KEY]
        losses.append(F.cross_entropy(logits, target, reduction="none").cpu().numpy())
        preds.append(logits.argmax(dim=1).cpu().numpy())
        labels.append(target.cpu().numpy())
    local = [np.concatenate(a) if a else np.zeros(0) for a in (labels, preds, losses)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local)
        local = [np.concatenate([g[i] for g in gathered]) for i in range(3)]
    y_true, y_pred, loss = local
    return {
        "loss": float(loss.mean()),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


class TrainShardCache:
    """This worker's train shard, kept after one streamed pass when it fits.

    Ray Data restarts its streaming split every epoch and converts every batch; for a
    shard that fits in memory that is pure overhead (bench/train_overhead.py measured
    it). The first epoch streams from Ray Data and keeps the CPU batches; later epochs
    draw batches from a seeded permutation of the kept rows. Over the byte limit, the
    cache is dropped and every epoch streams. A restarted worker starts empty."""

    def __init__(self, limit_mb: int) -> None:
        self.limit_bytes = limit_mb * 2**20
        self.parts: list[dict[str, torch.Tensor]] = []
        self.size_bytes = 0
        self.rows: dict[str, torch.Tensor] | None = None

    def batches(self, shard: Any, batch_size: int, device: torch.device, seed: int) -> Any:
        if self.rows is not None:
            count = len(self.rows[LABEL_KEY])
            order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
            for start in range(0, count, batch_size):
                index = order[start : start + batch_size]
                yield {k: v[index].to(device) for k, v in self.rows.items()}
            return
        keep = self.limit_bytes > 0
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, local_shuffle_buffer_size=max(256, 4 * batch_size), local_shuffle_seed=seed
        ):
            if keep:
                self.parts.append(batch)
                self.size_bytes += sum(t.numel() * t.element_size() for t in batch.values())
                keep = self.size_bytes <= self.limit_bytes
            yield {k: v.to(device) for k, v in batch.items()}
        if keep and self.parts:
            self.rows = {k: torch.cat([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []


def peft_setup_of(params: LoopParams) -> PeftSetup | None:
    if params.training.mode != "peft" or params.training.peft is None:
        return None
    return PeftSetup(
        model=params.model, peft=params.training.peft, num_labels=params.num_labels, seed=params.seed,
        init_backbone=params.init_backbone,
    )


def describe_trainable(model: torch.nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


# --- the loop -------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    params: LoopParams = config["params"]
    training, model_cfg = params.training, params.model
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(training.precision, device)
    stopping = training.early_stopping

    # --- setup ---
    torch.manual_seed(params.seed)  # identical initial weights on every rank
    peft_setup = peft_setup_of(params)
    model = (
        peft_setup.build()
        if peft_setup is not None
        else build_initial_classifier(model_cfg, params.num_labels, params.init_backbone)
    )
    if rank == 0:
        logger.info(describe_trainable(model))
    ddp_model = ray.train.torch.prepare_model(model)  # moves to device; DDP when world > 1
    optimizer = torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.lr)
    rows_per_worker = math.ceil(params.train_rows / world)
    steps_per_epoch = max(1, math.ceil(rows_per_worker / training.batch_size))
    total_steps = steps_per_epoch * training.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(training.warmup_ratio * total_steps), total_steps
    )
    ema_model = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(training.ema.decay), use_buffers=True)
        if training.ema.enabled
        else None
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state: dict[str, Any] = {
        "epoch": 0, "history": [], "best": None, "best_epoch": None, "stale_epochs": 0, "resumed_at": [],
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory), model, ema_model, optimizer, scheduler)
        state["resumed_at"].append(state["epoch"])
    train_shard = ray.train.get_dataset_shard("train")
    train_cache = TrainShardCache(training.cache_train_shard_mb)
    val_select = ray.train.get_dataset_shard("val_select")
    progress = ProgressFile(Path(params.metrics_dir), training.epochs, steps_per_epoch) if rank == 0 else None

    # --- train ---
    for epoch in range(state["epoch"], training.epochs):
        if params.fail_at_epoch == epoch and checkpoint is None:
            # Simulate a worker killed mid-run (no cleanup, like SIGKILL). The wait lets
            # the controller collect the previous epoch's report first: it polls
            # workers every 2 s, and a report still queued in a dead worker is lost.
            time.sleep(5)
            os._exit(1)
        ddp_model.train()
        if model_cfg.freeze_backbone:
            model.backbone.eval()  # a linear probe: no dropout noise in the frozen features
        started = time.perf_counter()
        samples, loss_sum = 0, 0.0
        if progress is not None:
            progress.start_epoch(epoch)
        for step, batch in enumerate(
            train_cache.batches(train_shard, training.batch_size, device, params.seed * 1000 + epoch), start=1
        ):
            target = batch[LABEL_KEY]
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                loss = F.cross_entropy(ddp_model(**model_inputs(batch)).float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if training.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema_model is not None:
                ema_model.update_parameters(model)
            samples += len(target)
            loss_sum += float(loss.detach()) * len(target)
            if progress is not None:
                progress.update(epoch, step, loss_sum / samples)
        train_seconds = time.perf_counter() - started
        if progress is not None:
            progress.update(epoch, progress.steps, loss_sum / max(samples, 1), force=True)

        # --- validate ---
        eval_model = ema_model.module if ema_model is not None else model
        val = evaluate(eval_model, val_select, training.eval_batch_size, device, dtype)
        value = val[stopping.metric]
        if is_improvement(value, state["best"], stopping.mode, stopping.min_delta):
            state.update(best=value, best_epoch=epoch, stale_epochs=0)
        else:
            state["stale_epochs"] += 1
        row = {
            "epoch": epoch,
            "lr": scheduler.get_last_lr()[0],
            "train/loss": loss_sum / max(samples, 1),
            "train/samples": samples,  # this rank's; the global count is samples x world
            "train/seconds": round(train_seconds, 4),
            "train/samples_per_s": samples * world / max(train_seconds, 1e-9),
            **{f"val_select/{k}": v for k, v in val.items()},
            "best_epoch": state["best_epoch"],
            # Score for Ray's checkpoint retention: the epoch index when this epoch became
            # the best so far, else -1. Strictly increasing over improvements, so the
            # selected checkpoint always outranks every other (raw metric values can
            # tie, and a tie may evict the earlier, selected checkpoint).
            "checkpoint_rank": epoch if state["best_epoch"] == epoch else -1,
            "attempt": len(state["resumed_at"]),
            "world_size": world,
        }
        state["history"].append(row)
        if rank == 0:
            # A logger, not print: Ray Train patches print in workers to both echo and
            # log it, which shows every line twice on the driver.
            logger.info(
                f"epoch {epoch + 1}/{training.epochs}: train/loss={row['train/loss']:.4f} "
                f"val_select/loss={val['loss']:.4f} accuracy={val['accuracy']:.4f} "
                f"macro_f1={val['macro_f1']:.4f} ({train_seconds:.1f}s, "
                f"{row['train/samples_per_s']:.0f} samples/s)"
            )
        state["epoch"] = epoch + 1
        stop = stopping.patience is not None and state["stale_epochs"] >= stopping.patience
        state["stopped_early"] = stop and epoch + 1 < training.epochs

        # --- save ---
        with tempfile.TemporaryDirectory() as tmp:
            report_checkpoint = None
            if rank == 0:
                save_checkpoint(Path(tmp), model, ema_model, optimizer, scheduler, state, peft_setup)
                write_metrics_history(state["history"], Path(params.metrics_dir))
                report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=report_checkpoint)
        if stop:
            break


# --- driver side ------------------------------------------------------------------------


def fit_baseline(
    params: LoopParams,
    datasets: dict[str, Any],
    scaling: ScalingConfig,
    storage_dir: Path,
    name: str,
    callbacks: list[Any] | None = None,
) -> FitResult:
    """Run the TorchTrainer and return the history and the selected checkpoint.
    `callbacks` are Ray Train callbacks (a sweep passes Tune's TuneReportCallback, so
    every epoch's report reaches the Tune trial and its scheduler)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    if set(datasets) != {"train", "val_select"}:
        raise ValueError(f"training takes exactly train and val_select, got {sorted(datasets)}")
    if params.training.mode == "peft" and params.training.peft is not None:
        # Here, not in a worker: there a bad target would fail every group restart.
        plan = check_peft_setup(params.model, params.training.peft)
        logger.info(f"peft {params.training.peft.method} r={params.training.peft.r}: {plan.describe()}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"params": params},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        datasets=datasets,
        # Only train is sharded; every rank sees all of val_select and evaluates its
        # share of the batches (a streaming split may drop rows to equalise shards).
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_dir.resolve()),
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=params.training.checkpoints_to_keep,
                checkpoint_score_attribute="checkpoint_rank",
                checkpoint_score_order="max",
            ),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    state = read_state(Path(result.checkpoint.path))
    best_epoch = state["best_epoch"]
    best = [c for c, m in result.best_checkpoints if m.get("epoch") == best_epoch]
    if not best:
        raise RuntimeError(f"the checkpoint of the selected epoch {best_epoch} was not kept")
    # The driver writes the final history from the latest checkpoint: the same rows
    # rank 0 wrote, recovered from storage even if rank 0 ran on another node.
    write_metrics_history(state["history"], Path(params.metrics_dir))
    return FitResult(
        history=state["history"],
        best_epoch=best_epoch,
        best_checkpoint=Path(best[0].path),
        resumed_at=state["resumed_at"],
    )
