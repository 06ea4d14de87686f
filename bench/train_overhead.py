"""Ray Train overhead: the same training run in plain PyTorch and on ray-app's Ray loop.

What it measures
----------------
One model, one data split and one number of optimizer steps, trained in the same
process and run by:

* plain: an in-process PyTorch loop (the `train` split preprocessed with
  `preprocess_image_batch` into tensors, a shuffling `DataLoader`, AdamW on
  `param_groups`, the cosine schedule with warmup, gradient clipping, cross-entropy);
* ray: ray-app's real loop, `trainers.train_loop.fit_classifier`, called exactly as
  `ray_app.stages.train.run_training` calls it (materialized, preprocessed Ray Datasets,
  `LoopParams`, the config's scaling: 1 CPU worker by default).

The plain loop runs before and after the Ray loop, so a change in the machine's load
during the benchmark shows up as `plain_drift`. For each loop it reports steady-state
training throughput (median samples/s over the epochs after the first, warm-up one,
training steps only) and the ratio ray / plain (target
>= 0.9), plus the fixed start-up cost: total wall time minus epochs x the median
per-epoch training time. For ray that is the whole `fit_classifier` call, so it also
holds worker start-up, each epoch's validation and checkpointing (see "notes" in the
JSON).

Both loops use the same intra-op thread count (`--threads`, default 1): the Ray worker
reserves that many CPUs (Ray then sets OMP_NUM_THREADS to it) and the plain loop calls
`torch.set_num_threads`.

How to run
----------
    python bench/train_overhead.py [--epochs 6] [--threads 1] [--override training.batch_size=64]

Only the JSON result is printed on stdout (logs go to stderr); it is also written to
bench/results/train_overhead.json. Record the numbers, with the machine they came from,
in BENCHMARKS.md. Timings are noisy on a machine that runs other work at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before Ray is imported anywhere: keep Ray Data quiet (the workers inherit the env).
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import ray  # noqa: E402
import ray.data  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

from ray_app.config import AppConfig, load_config  # noqa: E402
from ray_app.errors import UserError  # noqa: E402
from ray_app.ray_runtime import init_ray  # noqa: E402
from ray_app.runs import Run  # noqa: E402
from ray_app.splits import SplitReader  # noqa: E402
from ray_app.stages.context import StageContext  # noqa: E402
from ray_app.stages.splits import ensure_splits  # noqa: E402
from trainers.augment import training_inputs  # noqa: E402
from trainers.model import build_classifier  # noqa: E402
from trainers.optim import param_groups, training_loss  # noqa: E402
from trainers.preprocess import LABEL_KEY, ImageSpec, preprocess_dataset, preprocess_image_batch  # noqa: E402
from trainers.train_loop import LoopParams, fit_classifier  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "digits.yaml"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "train_overhead.json"
TARGET_RATIO = 0.9
# The plain rate after the Ray loop differing from the one before by more than this
# means the machine's load changed during the run: repeat before trusting the ratio.
MAX_PLAIN_DRIFT = 0.1


def log(message: str) -> None:
    print(f"[train_overhead] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[Any]:
    """Send everything written to fd 1 (Ray's forwarded worker logs included) to
    stderr; yield a file on the real stdout for the final JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real_stdout = os.fdopen(os.dup(saved), "w")
    try:
        yield real_stdout
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real_stdout.close()


# --- setup --------------------------------------------------------------------------


def load_bench_config(config: Path, epochs: int, threads: int, storage: Path, overrides: list[str]) -> AppConfig:
    """The config under test. Early stopping is off so both loops run the same number of
    steps; user overrides come last and win."""
    base = [
        f"training.epochs={epochs}",
        "training.early_stopping.patience=null",
        f"scaling.cpus_per_worker={threads}",
        f"ray.num_cpus={max(2, threads + 1)}",
        f"storage.root={storage}",
    ]
    return load_config(config, base + overrides)


def load_train_tensors(run: Run, spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's rows, preprocessed in-process by the same function Ray Data runs."""
    table = SplitReader(run.splits_dir).read_table("train", "train", columns=["image", "label_id"])
    batch = {
        "image": table.column("image").to_numpy(zero_copy_only=False),
        "label_id": table.column("label_id").to_numpy(),
    }
    out = preprocess_image_batch(batch, spec)
    return torch.from_numpy(out["pixel_values"]), torch.from_numpy(out[LABEL_KEY])


def steady_epochs(samples: list[int], seconds: list[float]) -> list[tuple[int, float]]:
    """(samples, seconds) of the epochs after the first (warm-up) one."""
    pairs = list(zip(samples, seconds))
    return pairs[1:] if len(pairs) > 1 else pairs


def steady_state(*runs: dict[str, Any]) -> tuple[float, float]:
    """(median samples/s, median epoch seconds) over the steady epochs of the runs."""
    pairs = [p for run in runs for p in steady_epochs(run["epoch_samples"], run["epoch_seconds"])]
    return statistics.median(n / max(s, 1e-9) for n, s in pairs), statistics.median(s for _, s in pairs)


# --- plain PyTorch --------------------------------------------------------------------


def plain_fit(
    cfg: AppConfig, pixels: torch.Tensor, labels: torch.Tensor, num_labels: int, tag: str, spec: ImageSpec
) -> dict[str, Any]:
    """The baseline recipe without Ray: same model, optimizer groups (head rate, layer
    decay), schedule, clipping, loss (label smoothing), augmentation and batch size, the
    uint8 pixels normalised per batch as ray-app's loop does. Times each epoch's batch
    loop only."""
    training = cfg.training
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg.model, num_labels)
    lr = training.peak_lr()
    optimizer = torch.optim.AdamW(param_groups(model, training.weight_decay, lr, training.head_lr_scale,
                                               training.layer_decay), lr=lr)
    augment_random = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, math.ceil(len(labels) / training.batch_size))
    total_steps = steps_per_epoch * training.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(training.warmup_ratio * total_steps), total_steps)
    loader = DataLoader(
        TensorDataset(pixels, labels),
        batch_size=training.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    epoch_seconds: list[float] = []
    epoch_samples: list[int] = []
    for epoch in range(training.epochs):
        model.train()
        epoch_started = time.perf_counter()
        samples, loss_sum = 0, 0.0
        for batch_pixels, target in loader:
            inputs = training_inputs({"pixel_values": batch_pixels}, spec, training.augment, augment_random)
            loss = training_loss(model(**inputs).float(), target, training)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if training.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            samples += len(target)
            loss_sum += float(loss.detach()) * len(target)
        epoch_seconds.append(time.perf_counter() - epoch_started)
        epoch_samples.append(samples)
        log(
            f"plain ({tag}) epoch {epoch + 1}/{training.epochs}: loss={loss_sum / max(samples, 1):.4f} "
            f"{epoch_seconds[-1]:.2f}s {samples / epoch_seconds[-1]:.0f} samples/s"
        )
    return {
        "total_s": time.perf_counter() - started,
        "epoch_seconds": epoch_seconds,
        "epoch_samples": epoch_samples,
        "steps_per_epoch": steps_per_epoch,
    }


# --- Ray Train ----------------------------------------------------------------------------


class ReportWatcher:
    """Polls the metrics.jsonl that rank 0 rewrites at the end of every epoch (after
    validation and checkpointing, just before `ray.train.report`) and records when each
    epoch's row appeared, in seconds since `start`. Gives the Ray start-up breakdown."""

    def __init__(self, path: Path, start: float, interval_s: float = 0.05) -> None:
        self.path, self.start, self.interval_s = path, start, interval_s
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.path.read_text().count("\n")
            except OSError:
                rows = 0
            now = time.perf_counter() - self.start
            self.times.extend([now] * max(0, rows - len(self.times)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ReportWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_fit(cfg: AppConfig, run: Run, reader: SplitReader, spec: ImageSpec) -> dict[str, Any]:
    """`fit_classifier` exactly as `ray_app.stages.train.run_training` calls it; the whole call
    is timed, per-epoch training seconds come from its history."""
    summary = reader.summary()
    prep_started = time.perf_counter()
    datasets = {s: preprocess_dataset(reader.read(s, "train"), spec).materialize() for s in ("train", "val_select")}
    prep_s = time.perf_counter() - prep_started
    params = LoopParams(
        model=cfg.model,
        training=cfg.training,
        num_labels=len(summary["label_names"]),
        train_rows=summary["splits"]["train"]["count"],
        seed=cfg.seed,
        history=run.train.history_files(),
        input_spec=spec,
    )
    started = time.perf_counter()
    with ReportWatcher(run.train.metrics, started) as watcher:
        fit = fit_classifier(params, datasets, cfg.scaling, run.train.ray_storage, run.name)
        total_s = time.perf_counter() - started
    return {
        "total_s": total_s,
        # Only the reports written while fit ran count (the driver rewrites the file at the end).
        "report_times_s": watcher.times[: len(fit.history)],
        "preprocess_materialize_s": prep_s,
        "epoch_seconds": [float(r["train/seconds"]) for r in fit.history],
        "epoch_samples": [int(r["train/samples"]) * int(r["world_size"]) for r in fit.history],
    }


# --- report ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def ray_breakdown(ray_run: dict[str, Any], median_epoch_s: float) -> dict[str, float | None]:
    """Where the Ray start-up cost goes, from when each epoch's report appeared."""
    times, seconds = ray_run["report_times_s"], ray_run["epoch_seconds"]
    if len(times) < 2 or len(times) != len(seconds):
        keys = ("before_first_epoch", "first_epoch_warmup", "per_epoch_outside_train", "after_last_epoch")
        return {f"ray_{k}_s": None for k in keys}
    # Validation + checkpoint + report per epoch: the gap between two reports minus that
    # epoch's training time.
    extra = statistics.median(t1 - t0 - s for t0, t1, s in zip(times, times[1:], seconds[1:]))
    return {
        "ray_before_first_epoch_s": round(times[0] - seconds[0] - extra, 3),
        "ray_first_epoch_warmup_s": round(seconds[0] - median_epoch_s, 3),
        "ray_per_epoch_outside_train_s": round(extra, 3),
        "ray_after_last_epoch_s": round(ray_run["total_s"] - times[-1], 3),
    }


def build_report(
    cfg: AppConfig,
    args: argparse.Namespace,
    plain_runs: list[dict[str, Any]],
    ray_run: dict[str, Any],
    machine: dict[str, Any],
) -> dict[str, Any]:
    plain = plain_runs[0]
    plain_rate, plain_epoch_s = steady_state(*plain_runs)
    ray_rate, ray_epoch_s = steady_state(ray_run)
    ratio = ray_rate / plain_rate
    before_after = [round(steady_state(run)[0], 1) for run in plain_runs]
    drift = before_after[-1] / before_after[0] - 1
    ray_epochs = len(ray_run["epoch_seconds"])
    return {
        "benchmark": "train_overhead",
        "machine": machine,
        "config": str(args.config),
        "overrides": args.override,
        "model": cfg.model.backbone.config or cfg.model.backbone.id,
        "epochs": cfg.training.epochs,
        "ray_epochs_run": ray_epochs,
        "steps_per_epoch": plain["steps_per_epoch"],
        "train_rows": sum(plain["epoch_samples"]) // len(plain["epoch_samples"]),
        "batch_size": cfg.training.batch_size,
        "threads": args.threads,
        "num_workers": cfg.scaling.num_workers,
        "plain_samples_per_s": round(plain_rate, 1),
        "ray_samples_per_s": round(ray_rate, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "plain_samples_per_s_before_after_ray": before_after,
        "plain_drift": round(drift, 3),
        "noisy": abs(drift) > MAX_PLAIN_DRIFT,
        "plain_median_epoch_s": round(plain_epoch_s, 4),
        "ray_median_epoch_s": round(ray_epoch_s, 4),
        "plain_startup_s": round(plain["total_s"] - cfg.training.epochs * steady_state(plain)[1], 3),
        "ray_startup_s": round(ray_run["total_s"] - ray_epochs * ray_epoch_s, 3),
        "plain_total_s": round(plain["total_s"], 3),
        "ray_total_s": round(ray_run["total_s"], 3),
        "ray_outside_train_steps_s": round(ray_run["total_s"] - sum(ray_run["epoch_seconds"]), 3),
        **ray_breakdown(ray_run, ray_epoch_s),
        "ray_preprocess_materialize_s": round(ray_run["preprocess_materialize_s"], 3),
        "plain_epoch_seconds": [[round(s, 4) for s in run["epoch_seconds"]] for run in plain_runs],
        "ray_epoch_seconds": [round(s, 4) for s in ray_run["epoch_seconds"]],
        "plain_epoch_samples_per_s": [
            [round(n / s, 1) for n, s in zip(run["epoch_samples"], run["epoch_seconds"])] for run in plain_runs
        ],
        "ray_epoch_samples_per_s": [
            round(n / s, 1) for n, s in zip(ray_run["epoch_samples"], ray_run["epoch_seconds"])
        ],
        "notes": (
            "samples/s: median over the epochs after the first (warm-up), training steps only "
            "(plain: perf_counter around the DataLoader batch loop; ray: train/seconds from "
            "fit_classifier's history, which includes starting iter_torch_batches each epoch). "
            "The plain loop runs twice, before and after the Ray loop; its rate is the median "
            "over both runs' steady epochs, plain_drift = after/before - 1 shows how much the "
            "machine's load moved meanwhile (noisy = |plain_drift| > 0.1: repeat the run), and "
            "plain per-epoch lists are [before, after]. "
            "startup_s = total wall time - epochs x median epoch time. plain total (first, "
            "before-Ray run): model build + optimizer + all epochs (in-process preprocessing "
            "not included). ray total: "
            "the whole fit_classifier call, so ray_startup_s also holds Ray Train worker "
            "start-up, per-epoch validation on val_select, per-epoch checkpointing and "
            "metrics writing, and the driver reading the final checkpoint; dataset "
            "preprocess+materialize is reported separately (ray_preprocess_materialize_s). "
            "Breakdown (from when rank 0 rewrote metrics.jsonl each epoch, polled every 50 ms): "
            "ray_before_first_epoch_s = controller, worker group, dataset actors and model "
            "build until the first batch; ray_first_epoch_warmup_s = first epoch minus the "
            "median one; ray_per_epoch_outside_train_s = validation + checkpoint + report per "
            "epoch; ray_after_last_epoch_s = shutdown and the driver reading the checkpoint. "
            "Early stopping is disabled so both run the same optimizer steps. Both use "
            "`threads` intra-op threads (Ray: cpus_per_worker -> OMP_NUM_THREADS; plain: "
            "torch.set_num_threads). Timings are noisy when the machine runs other work "
            "(see machine.load_avg_1m_at_start)."
        ),
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare steady-state samples/s and start-up cost of a plain PyTorch "
        "loop and ray-app's Ray Train loop on the same model, data and steps.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="app config YAML (default: configs/digits.yaml)"
    )
    parser.add_argument("--epochs", type=int, default=6, help="epochs for both loops (default: 6; first is warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op torch threads for both loops (default: 1)")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --override training.batch_size=64",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def run_benchmark(args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    cfg = load_bench_config(args.config, args.epochs, args.threads, storage, args.override)
    machine = machine_info()
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_ray(cfg)
    ctx = StageContext.for_config(cfg)
    run = ctx.run
    reader = ensure_splits(ctx)
    spec = ctx.input_spec
    if not isinstance(spec, ImageSpec):
        raise SystemExit("train_overhead supports image configs only")
    pixels, labels = load_train_tensors(run, spec)
    num_labels = len(reader.summary()["label_names"])

    torch.set_num_threads(args.threads)
    log(f"plain loop: {len(labels)} rows, {cfg.training.epochs} epochs, {args.threads} thread(s)")
    plain_before = plain_fit(cfg, pixels, labels, num_labels, "before ray", spec)
    log(f"ray loop: {cfg.scaling.num_workers} worker(s) x {cfg.scaling.cpus_per_worker} CPU")
    ray_run = ray_fit(cfg, run, reader, spec)
    plain_after = plain_fit(cfg, pixels, labels, num_labels, "after ray", spec)
    return build_report(cfg, args, [plain_before, plain_after], ray_run, machine)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with stdout_to_stderr() as real_stdout, tempfile.TemporaryDirectory(prefix="train_overhead_") as tmp:
        try:
            report = run_benchmark(args, Path(tmp))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        finally:
            if ray.is_initialized():
                ray.shutdown()
        write_report(report, args.output)
        real_stdout.write(json.dumps(report, indent=2) + "\n")
        real_stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
