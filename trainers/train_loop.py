"""The training recipe on Ray Train, for baseline and PEFT classifiers alike.

Worker side, `train_loop_per_worker`, reads as the recipe it is:

    worker = setup_worker(params)            # model, DDP, optimizer, schedule, resume
    for each epoch:
        train_epoch(worker, epoch)           # this rank's shard of `train`
        validate(worker)                     # val_select, gathered over ranks
        save_and_report(worker, row)         # rank 0's checkpoint -> ray.train.report

Every rank builds the classifier from the same seed and wraps it for DDP. Each epoch
picks the best epoch by the early-stopping metric, and rank 0 reports a checkpoint. A
restarted worker group finds the latest checkpoint with `ray.train.get_checkpoint()`
and continues from the epoch after it, so a killed worker costs at most one epoch.

`training.mode: peft` runs the same loop on a classifier whose backbone carries peft
adapters (trainers.adapters): only the trainable tensors are optimised and
checkpointed, and the frozen base is rebuilt from the seed on resume.

Driver side, `fit_classifier`: one `TorchTrainer`, then the selected checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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

from trainers.adapters import PeftSetup
from trainers.augment import training_inputs
from trainers.checkpoint import load_checkpoint, read_state, save_checkpoint
from trainers.config import ModelConfig, ScalingConfig, TrainingConfig
from trainers.history import HistoryFiles, ProgressFile, write_metrics_history
from trainers.model import Classifier, InitBackbone, build_initial_classifier
from trainers.optim import param_groups, training_loss
from trainers.preprocess import LABEL_KEY, ImageSpec, TextSpec, model_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStart:
    """Where a worker is when an epoch begins, as `LoopParams.before_epoch` sees it."""

    epoch: int
    rank: int
    attempt: int  # worker-group restarts so far: 0 on the first attempt


@dataclass
class LoopParams:
    """Everything a worker needs; passed as the TorchTrainer's train_loop_config."""

    model: ModelConfig
    training: TrainingConfig
    num_labels: int
    train_rows: int
    seed: int
    history: HistoryFiles
    # How split rows became model inputs: uint8 images are normalised with it on the
    # worker's device (trainers.preprocess.model_inputs).
    input_spec: ImageSpec | TextSpec | None = None
    # model.init_from resolved on the driver: the saved model whose backbone weights
    # replace the freshly built backbone before training (and before adapters).
    init_backbone: InitBackbone | None = None
    # Called on every worker at the start of every epoch, before any step: how a test
    # kills a worker mid-run to prove that a restarted group resumes.
    before_epoch: Callable[[EpochStart], None] | None = None

    def peft_setup(self) -> PeftSetup | None:
        if self.training.mode != "peft" or self.training.peft is None:
            return None
        return PeftSetup(model=self.model, peft=self.training.peft, num_labels=self.num_labels, seed=self.seed,
                         init_backbone=self.init_backbone)

    def steps_per_epoch(self, world_size: int) -> int:
        return max(1, math.ceil(math.ceil(self.train_rows / world_size) / self.training.batch_size))


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_checkpoint: Path
    resumed_at: list[int] = field(default_factory=list)


# --- helpers ------------------------------------------------------------------------


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


def describe_trainable(model: torch.nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def stream_batches(dataset: Any, batch_size: int, device: torch.device, **options: Any) -> Iterable[dict[str, Any]]:
    """Batches of a Ray Dataset (or shard) on `device`. On a GPU, Ray Data copies from
    pinned memory while the previous batches compute (two batches prefetched)."""
    on_gpu = device.type == "cuda"
    return dataset.iter_torch_batches(batch_size=batch_size, device=device, pin_memory=on_gpu,
                                      prefetch_batches=2 if on_gpu else 1, **options)


def _nbytes(batch: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in batch.values())


class TrainShardCache:
    """This worker's train shard, kept after one streamed pass when it fits.

    Ray Data restarts its streaming split every epoch and converts every batch; for a
    shard that fits in memory that is pure overhead (bench/train_overhead.py measured
    it). The first epoch streams from Ray Data and keeps the batches where they arrived
    (on a GPU, in GPU memory: later epochs copy nothing); later epochs draw batches from
    a seeded permutation of the kept rows. Over the byte limit, the cache is dropped and
    every epoch streams. A restarted worker starts empty."""

    def __init__(self, limit_mb: int) -> None:
        self.limit_bytes = limit_mb * 2**20
        self.parts: list[dict[str, torch.Tensor]] = []
        self.size_bytes = 0
        self.rows: dict[str, torch.Tensor] | None = None

    def batches(self, shard: Any, batch_size: int, device: torch.device, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.rows is not None:
            count = len(self.rows[LABEL_KEY])
            order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
            for start in range(0, count, batch_size):
                index = order[start : start + batch_size].to(self.rows[LABEL_KEY].device)
                yield {k: v[index].to(device) for k, v in self.rows.items()}
            return
        keep = self.limit_bytes > 0
        for batch in stream_batches(shard, batch_size, device, local_shuffle_buffer_size=max(256, 4 * batch_size),
                                    local_shuffle_seed=seed):
            if keep:
                self.parts.append(batch)
                self.size_bytes += _nbytes(batch)
                keep = self.size_bytes <= self.limit_bytes
            yield {k: v.to(device) for k, v in batch.items()}
        if keep and self.parts:
            self.rows = {k: torch.cat([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []


class ValidationCache:
    """This rank's share of val_select (every world-th batch), preprocessed once: kept
    after the first validation when it fits in `limit_mb`, where the batches arrived."""

    def __init__(self, limit_mb: int) -> None:
        self.limit_bytes = limit_mb * 2**20
        self.kept: list[dict[str, torch.Tensor]] | None = None

    def batches(self, dataset: Any, batch_size: int, device: torch.device, rank: int = 0,
                world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        if self.kept is not None:
            yield from ({k: v.to(device) for k, v in batch.items()} for batch in self.kept)
            return
        parts: list[dict[str, torch.Tensor]] | None = [] if self.limit_bytes > 0 else None
        size = 0
        for index, batch in enumerate(stream_batches(dataset, batch_size, device)):
            if index % world != rank:
                continue
            if parts is not None:
                parts.append(batch)
                size += _nbytes(batch)
                parts = parts if size <= self.limit_bytes else None
            yield batch
        self.kept = parts


# --- worker side --------------------------------------------------------------------


@dataclass
class Worker:
    """One rank's training state, built by `setup_worker`."""

    params: LoopParams
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype | None
    model: Classifier
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema_model: AveragedModel | None
    scaler: torch.amp.GradScaler
    peft_setup: PeftSetup | None
    state: dict[str, Any]  # epoch, history, best, best_epoch, stale_epochs, resumed_at
    train_shard: Any
    train_cache: TrainShardCache
    val_select: Any
    val_cache: ValidationCache
    progress: ProgressFile | None  # rank 0 only

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validated, selected and exported: the EMA copy when EMA is on."""
        return self.ema_model.module if self.ema_model is not None else self.model

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()


def speed_options(training: TrainingConfig, device: torch.device) -> dict[str, Any]:
    """The GPU speed options in force on `device` (all off on a CPU): TF32 matmuls, the
    fused AdamW kernel, torch.compile. Sets TF32 for this process as a side effect."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = training.tf32
        torch.backends.cudnn.allow_tf32 = training.tf32
    return {"tf32": on_gpu and training.tf32, "fused_optimizer": on_gpu and training.fused_optimizer,
            "compile": training.compile}


def setup_worker(params: LoopParams) -> Worker:
    """The classifier (same seed on every rank, adapters in PEFT mode), DDP, AdamW with
    warmup + cosine, EMA, and the loop state — restored from the latest checkpoint
    when this worker group is a restart."""
    training = params.training
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(training.precision, device)
    options = speed_options(training, device)
    torch.manual_seed(params.seed)  # identical initial weights on every rank
    peft_setup = params.peft_setup()
    model = peft_setup.build() if peft_setup is not None else build_initial_classifier(
        params.model, params.num_labels, params.init_backbone
    )
    if rank == 0:
        logger.info(f"{describe_trainable(model)} on {device}; {options}")
    ddp_model = ray.train.torch.prepare_model(model)  # moves to device; DDP when world > 1
    if options["compile"]:
        ddp_model = torch.compile(ddp_model)
    optimizer = torch.optim.AdamW(param_groups(model, training.weight_decay, training.peak_lr(), training.head_lr_scale,
                                               training.layer_decay), lr=training.peak_lr(),
                                  fused=options["fused_optimizer"] or None)
    steps = params.steps_per_epoch(world)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(training.warmup_ratio * steps * training.epochs),
                                                steps * training.epochs)
    ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(training.ema.decay), use_buffers=True) if (
        training.ema.enabled) else None
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "best_epoch": None, "stale_epochs": 0,
                             "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory), model, ema_model, optimizer, scheduler)
        state["resumed_at"].append(state["epoch"])
    return Worker(
        params=params, rank=rank, world=world, device=device, dtype=dtype, model=model, ddp_model=ddp_model,
        optimizer=optimizer, scheduler=scheduler, ema_model=ema_model,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), peft_setup=peft_setup,
        state=state, train_shard=ray.train.get_dataset_shard("train"),
        train_cache=TrainShardCache(training.cache_train_shard_mb), val_select=ray.train.get_dataset_shard("val_select"),
        val_cache=ValidationCache(training.cache_train_shard_mb),
        progress=ProgressFile(Path(params.history.progress), training.epochs, steps) if rank == 0 else None,
    )


def train_epoch(worker: Worker, epoch: int) -> dict[str, float]:
    """One pass over this rank's shard of `train`: loss, samples and seconds."""
    training = worker.params.training
    worker.ddp_model.train()
    if worker.params.model.freeze_backbone:
        worker.model.backbone.eval()  # a linear probe: no dropout noise in the frozen features
    if worker.progress is not None:
        worker.progress.start_epoch(epoch)
    started, samples, loss_sum = time.perf_counter(), 0, 0.0
    batches = worker.train_cache.batches(worker.train_shard, training.batch_size, worker.device,
                                         worker.params.seed * 1000 + epoch)
    # Augmentation draws from its own seeded generator: reproducible, and independent of
    # the shuffling's random numbers.
    augment_random = torch.Generator().manual_seed(worker.params.seed * 1000 + epoch + 1)
    for step, batch in enumerate(batches, start=1):
        target = batch[LABEL_KEY]
        inputs = training_inputs(batch, worker.params.input_spec, training.augment, augment_random)
        with worker.autocast():
            loss = training_loss(worker.ddp_model(**inputs).float(), target, training)
        worker.optimizer.zero_grad(set_to_none=True)
        worker.scaler.scale(loss).backward()
        if training.grad_clip_norm is not None:
            worker.scaler.unscale_(worker.optimizer)
            torch.nn.utils.clip_grad_norm_(worker.model.parameters(), training.grad_clip_norm)
        worker.scaler.step(worker.optimizer)
        worker.scaler.update()
        worker.scheduler.step()
        if worker.ema_model is not None:
            worker.ema_model.update_parameters(worker.model)
        samples += len(target)
        loss_sum += float(loss.detach()) * len(target)
        if worker.progress is not None:
            worker.progress.update(epoch, step, loss_sum / samples)
    seconds = time.perf_counter() - started
    if worker.progress is not None:
        worker.progress.update(epoch, worker.progress.steps, loss_sum / max(samples, 1), force=True)
    return {"loss": loss_sum / max(samples, 1), "samples": samples, "seconds": seconds}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
    dtype: torch.dtype | None, world: int = 1, spec: ImageSpec | TextSpec | None = None,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of `model` on batches of preprocessed rows (this
    rank's share: `ValidationCache.batches`). With several ranks, predictions are
    gathered so each rank computes the same exact metrics as a single process would."""
    model.eval()
    labels, preds, losses = [], [], []
    for batch in batches:
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = model(**model_inputs(batch, spec)).float()
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


def validate(worker: Worker) -> dict[str, float]:
    """val_select metrics of the weights that would be selected (the EMA copy when EMA
    is on), the same on every rank; val_select is preprocessed and copied once."""
    batches = worker.val_cache.batches(worker.val_select, worker.params.training.eval_batch_size, worker.device,
                                       worker.rank, worker.world)
    return evaluate(worker.eval_model, batches, worker.device, worker.dtype, worker.world, worker.params.input_spec)


def epoch_row(worker: Worker, epoch: int, trained: dict[str, float], val: dict[str, float]) -> dict[str, Any]:
    """Record the epoch in the loop state (best epoch, patience) and return its metrics
    row, the one `ray.train.report` sends and metrics.jsonl keeps."""
    stopping, state = worker.params.training.early_stopping, worker.state
    if is_improvement(val[stopping.metric], state["best"], stopping.mode, stopping.min_delta):
        state.update(best=val[stopping.metric], best_epoch=epoch, stale_epochs=0)
    else:
        state["stale_epochs"] += 1
    row = {
        "epoch": epoch,
        # training.lr times the schedule's current factor (every group has its own constant multiple).
        "lr": worker.params.training.peak_lr() * worker.scheduler.get_last_lr()[0] / worker.scheduler.base_lrs[0],
        "train/loss": trained["loss"],
        "train/samples": trained["samples"],  # this rank's; the global count is samples x world
        "train/seconds": round(trained["seconds"], 4),
        "train/samples_per_s": trained["samples"] * worker.world / max(trained["seconds"], 1e-9),
        **{f"val_select/{k}": v for k, v in val.items()},
        "best_epoch": state["best_epoch"],
        # Score for Ray's checkpoint retention: the epoch index when this epoch became
        # the best so far, else -1. Strictly increasing over improvements, so the
        # selected checkpoint always outranks every other (raw metric values can
        # tie, and a tie may evict the earlier, selected checkpoint).
        "checkpoint_rank": epoch if state["best_epoch"] == epoch else -1,
        "attempt": len(state["resumed_at"]),
        "world_size": worker.world,
    }
    state["history"].append(row)
    state["epoch"] = epoch + 1
    stop = stopping.patience is not None and state["stale_epochs"] >= stopping.patience
    state["stopped_early"] = stop and epoch + 1 < worker.params.training.epochs
    return row


def save_and_report(worker: Worker, row: dict[str, Any]) -> None:
    """Rank 0 writes the checkpoint and the metrics history; every rank reports the
    row (Ray Train needs every rank's report to end the epoch)."""
    if worker.rank == 0:
        # A logger, not print: Ray Train patches print in workers to both echo and
        # log it, which shows every line twice on the driver.
        logger.info(
            f"epoch {row['epoch'] + 1}/{worker.params.training.epochs}: train/loss={row['train/loss']:.4f} "
            f"val_select/loss={row['val_select/loss']:.4f} accuracy={row['val_select/accuracy']:.4f} "
            f"macro_f1={row['val_select/macro_f1']:.4f} ({row['train/seconds']:.1f}s, "
            f"{row['train/samples_per_s']:.0f} samples/s)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if worker.rank == 0:
            save_checkpoint(Path(tmp), worker.model, worker.ema_model, worker.optimizer, worker.scheduler,
                            worker.state, worker.peft_setup)
            write_metrics_history(worker.state["history"], worker.params.history)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(row, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    params: LoopParams = config["params"]
    worker = setup_worker(params)
    for epoch in range(worker.state["epoch"], params.training.epochs):
        if params.before_epoch is not None:
            params.before_epoch(EpochStart(epoch=epoch, rank=worker.rank, attempt=len(worker.state["resumed_at"])))
        trained = train_epoch(worker, epoch)
        row = epoch_row(worker, epoch, trained, validate(worker))
        save_and_report(worker, row)
        if worker.state["stopped_early"]:
            break


# --- driver side --------------------------------------------------------------------


def fit_classifier(
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
    write_metrics_history(state["history"], params.history)
    return FitResult(history=state["history"], best_epoch=best_epoch, best_checkpoint=Path(best[0].path),
                     resumed_at=state["resumed_at"])
