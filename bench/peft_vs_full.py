"""PEFT vs full fine-tuning: trainable parameters, peak memory and samples/s on CPU.

What it measures
----------------
One backbone, one data set and one number of optimizer steps, trained three ways:

* full: every weight trained, the classifier from `trainers.model.build_classifier`
  (what `training.mode: baseline` builds);
* lora: `trainers.adapters.PeftSetup(...).build()` with LoRA (`training.mode: peft`,
  `training.peft.method: lora`, rank `--lora-r`) on every attention and MLP projection
  of every block, the head trained in full;
* explora: the same with `unfreeze_last_blocks: 1` (adapters on all blocks but the
  last, which is trained in full).

All modes share the training step of `trainers/train_loop.py`: AdamW on
`trainers.train_loop.param_groups` (trainable tensors only), the cosine schedule with
warmup, cross-entropy on the logits, gradient clipping, the config's batch size and
learning rate. The data are scikit-learn's 1,797 digits encoded as PNG exactly as
`ray_app.sources` does for `kind: sklearn_digits`, then decoded, resized and
normalised by `trainers.preprocess.preprocess_image_batch` for the backbone's input
size, as training does. Every mode starts from the same random backbone (the seeded
`PeftSetup` draws the same base as the seeded full build), sees the same batches in
the same order (drop_last, reshuffled each pass by a seeded generator) and the same
dropout RNG stream. It is an in-process PyTorch loop: this compares the cost of the
modes, not Ray's (bench/train_overhead.py measures that).

Per mode it reports:

* trainable parameters and their fraction of all parameters, and for the PEFT modes
  whether the count equals what the adapter plan predicts (`trainers.adapters.
  check_peft_setup` on the meta-device skeleton: r x (in + out) per adapted Linear,
  plus the unfrozen blocks and the head);
* steady-state training samples/s. All modes train in one process and take turns:
  `--warmup-steps` untimed steps each, then `--windows` rounds in which every mode
  runs one timed window of `--steps-per-window` steps (the order rotates each round).
  A mode's rate is the median over its windows; its ratio to full is the median of
  the per-round ratios, so load from other work that changes between rounds hits
  every mode alike (a 2-core machine shared with other jobs made separate,
  back-to-back runs of each mode useless for ratios). The same windows are also
  measured in CPU time of the process (`samples_per_cpu_s`), which time-slicing by
  other processes barely changes: on a busy machine, compare those;
* peak memory: each mode also runs alone in its own fresh Python process (this
  script re-invoked with `--run-mode`) for `--warmup-steps` + one window, because
  torch has no peak-memory counter on CPU. The number is that process's peak RSS at
  the end (`getrusage(RUSAGE_SELF).ru_maxrss`) minus its RSS after imports and data
  loading, just before the model is built (free heap returned to the OS first): what
  the mode added, i.e. model + gradients + optimizer state + activations, as the
  process holds them with glibc's default malloc (`peak_added_mib`: what a training
  process really occupies, including heap that malloc keeps after tensors are
  freed). A second fresh process per mode repeats this with
  `MALLOC_MMAP_THRESHOLD_=65536`: every tensor of 64 KiB or more then gets its own
  mapping that goes back to the OS when freed, so its peak (`live_peak_added_mib`)
  follows the peak of live tensors, what the mode needs rather than what the
  allocator keeps;
* the train loss over the first and the last window, so a reader sees each mode
  learns.

Ratios against full fine-tuning in the same run are in `ratios_vs_full`.

How to run
----------
    python bench/peft_vs_full.py [--hidden 192] [--layers 6] [--image-size 32]
        [--steps-per-window 10] [--windows 8] [--threads 1] [--lora-r 8]
    python bench/peft_vs_full.py --preset digits   # the digits ViT of configs/digits_lora.yaml

Only the JSON result is printed on stdout (logs go to stderr); it is also written to
bench/results/peft_vs_full.json. Record the numbers, with the machine they came from,
in BENCHMARKS.md. Timings are noisy on a machine that runs other work at the same time.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from ray_app.config import AppConfig, load_config
from ray_app.errors import UserError
from ray_app.sources import encoded_digits
from trainers.adapters import PeftSetup, PeftSetupError, check_peft_setup
from trainers.config import PeftConfig
from trainers.model import Classifier, backbone_skeleton, build_classifier
from trainers.optim import param_groups
from trainers.preprocess import LABEL_KEY, ImageSpec, normalize_pixel_tensor, preprocess_image_batch, resolve_image_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
# A transformer on the digits (the default preset's ConvNeXt has no attention blocks to adapt).
DEFAULT_CONFIG = REPO_ROOT / "configs" / "digits_lora.yaml"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "peft_vs_full.json"
MODES = ("full", "lora", "explora")
# Full's window rates spreading more than this (max - min over the median) means the
# machine's load moved a lot during the run: repeat it when the machine is quieter.
MAX_FULL_SPREAD = 0.25
# glibc's mmap threshold for the live-memory runs (bytes): with it set, glibc no longer
# raises the threshold dynamically, so freed tensors return to the OS at once.
LIVE_MEMORY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
# The default backbone when --preset vit-small: a ViT-Tiny-like encoder (hidden 192,
# 3 heads, 6 blocks) on digits upscaled to 32x32 with 4x4 patches (64 patches + CLS).
# Large enough for the modes' costs to differ visibly on CPU, small enough that one
# mode's 85 default steps take about a minute on one quiet core.
VIT_SMALL = {"hidden": 192, "layers": 6, "image_size": 32, "patch_size": 4}
HEAD_DIM = 64  # hidden / heads, as in ViT-Tiny/Small/Base


def log(message: str) -> None:
    print(f"[peft_vs_full] {message}", file=sys.stderr, flush=True)


# --- config ---------------------------------------------------------------------------


def backbone_overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides that size the backbone (none for --preset digits)."""
    if args.preset == "digits":
        return []
    hidden = args.hidden
    key = "model.backbone.config"
    return [
        f"{key}.hidden_size={hidden}",
        f"{key}.num_hidden_layers={args.layers}",
        f"{key}.num_attention_heads={max(1, hidden // HEAD_DIM)}",
        f"{key}.intermediate_size={4 * hidden}",
        f"{key}.image_size={args.image_size}",
        f"{key}.patch_size={args.patch_size}",
    ]


def load_bench_config(args: argparse.Namespace) -> AppConfig:
    """The config under test: the YAML, the backbone size, then the user's overrides."""
    cfg = load_config(args.config, backbone_overrides(args) + args.override)
    if cfg.data.source.kind != "sklearn_digits":
        raise SystemExit(
            f"peft_vs_full runs on data.source.kind sklearn_digits; {args.config} has {cfg.data.source.kind}"
        )
    if cfg.model.freeze_backbone:
        raise SystemExit("peft_vs_full compares training the backbone: set model.freeze_backbone=false")
    return cfg


def peft_config_for(mode: str, args: argparse.Namespace) -> PeftConfig | None:
    """The adapters of a mode (None: full fine-tuning). LoRA with the config defaults
    (alpha 16, no dropout, target_modules auto) at rank --lora-r."""
    if mode == "full":
        return None
    return PeftConfig(method="lora", r=args.lora_r, unfreeze_last_blocks=1 if mode == "explora" else 0)


def build_model(mode: str, cfg: AppConfig, args: argparse.Namespace, num_labels: int) -> Classifier:
    """The classifier as ray-app's training loop builds it for the mode. Full: seeded,
    then `build_classifier` (as `train_loop_per_worker` does); PEFT: `PeftSetup`, which
    seeds itself with the same seed, so both start from the same backbone weights."""
    peft_cfg = peft_config_for(mode, args)
    if peft_cfg is None:
        torch.manual_seed(cfg.seed)
        return build_classifier(cfg.model, num_labels)
    return PeftSetup(model=cfg.model, peft=peft_cfg, num_labels=num_labels, seed=cfg.seed).build()


# --- data -------------------------------------------------------------------------------


def digits_png_batch() -> dict[str, np.ndarray]:
    """The sklearn digits as split rows: 8-bit grey PNG bytes (as ray_app.sources
    encodes them for `kind: sklearn_digits`) and label ids (labels "0".."9" sort to
    ids 0..9)."""
    encoded, targets = encoded_digits()
    return {"image": np.array(encoded, dtype=object), "label_id": targets.astype(np.int64)}


def load_digits_tensors(spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits, preprocessed by the function Ray Data runs during training and
    normalised as the training loop normalises them."""
    out = preprocess_image_batch(digits_png_batch(), spec)
    return normalize_pixel_tensor(torch.from_numpy(out["pixel_values"]), spec), torch.from_numpy(out[LABEL_KEY])


def endless_batches(
    pixels: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches forever, reshuffled every pass by a seeded generator: every mode
    sees the same batches in the same order."""
    loader = DataLoader(
        TensorDataset(pixels, labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader


# --- memory -----------------------------------------------------------------------------


def current_rss_kib() -> int:
    """This process's resident set size now (Linux /proc), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status: peak memory needs Linux")


def peak_rss_kib() -> int:
    """This process's peak resident set size so far, in KiB (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def release_free_heap() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so memory freed
    during data loading is not counted in the baseline and then silently reused by the
    model (which would hide part of what the mode adds)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def mib(kib: int | float) -> float:
    return round(kib / 1024, 1)


# --- parameters ---------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def predicted_trainable(mode: str, cfg: AppConfig, args: argparse.Namespace, num_labels: int) -> dict[str, Any]:
    """What the mode should train, from the plan ray-app checks on the driver (meta
    device, no memory): all parameters for full; for PEFT, r x (in + out) per adapted
    Linear (LoRA's A and B, bias none) + the unfrozen blocks + the head."""
    skeleton = backbone_skeleton(cfg.model.backbone)
    with torch.device("meta"):
        classifier = Classifier(
            skeleton,
            num_labels=num_labels,
            head=cfg.model.head,
            head_hidden_dim=cfg.model.head_hidden_dim,
            pooling=cfg.model.pooling,
        )
    head = sum(p.numel() for p in classifier.head.parameters())
    total = sum(p.numel() for p in classifier.parameters())
    peft_cfg = peft_config_for(mode, args)
    if peft_cfg is None:
        return {"trainable": total, "total_base": total, "plan": "every parameter"}
    plan = check_peft_setup(cfg.model, peft_cfg)
    adapters = 0
    for path in plan.targeted:
        linear = skeleton.get_submodule(path)
        adapters += peft_cfg.r * (linear.in_features + linear.out_features)
    unfrozen = sum(p.numel() for path in plan.unfrozen_blocks for p in skeleton.get_submodule(path).parameters())
    return {
        "trainable": adapters + unfrozen + head,
        "total_base": total,
        "adapter_params": adapters,
        "unfrozen_block_params": unfrozen,
        "head_params": head,
        "plan": plan.describe(),
    }


# --- training -------------------------------------------------------------------------------


class ModeTrainer:
    """One mode's classifier, optimizer, schedule, batch stream and dropout RNG: the
    training step of `train_loop_per_worker` on CPU (fp32: no autocast, no scaling).
    Several can share a process and take turns: each keeps its own RNG state."""

    def __init__(
        self, mode: str, cfg: AppConfig, args: argparse.Namespace, data: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        pixels, labels = data
        training = cfg.training
        self.mode = mode
        self.grad_clip_norm = training.grad_clip_norm
        self.model = build_model(mode, cfg, args, num_labels=int(labels.max()) + 1)
        self.trainable_params, self.total_params = count_parameters(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, training.weight_decay), lr=training.lr)
        total_steps = args.warmup_steps + args.windows * args.steps_per_window
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, int(training.warmup_ratio * total_steps), total_steps
        )
        self.batches = endless_batches(pixels, labels, training.batch_size, cfg.seed)
        # The same dropout masks in every mode, whatever ran before in the process.
        self.rng_state = torch.Generator().manual_seed(cfg.seed + 1).get_state()
        self.model.train()

    def _step(self) -> tuple[float, int, int]:
        pixels, target = next(self.batches)
        logits = self.model(pixel_values=pixels).float()
        loss = F.cross_entropy(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), int((logits.detach().argmax(dim=1) == target).sum()), len(target)

    def run(self, steps: int) -> dict[str, float]:
        """`steps` optimizer steps: wall and CPU seconds (this process, all threads),
        samples, mean loss and accuracy."""
        torch.set_rng_state(self.rng_state)
        started, cpu_started = time.perf_counter(), time.process_time()
        results = [self._step() for _ in range(steps)]
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        self.rng_state = torch.get_rng_state()
        samples = sum(n for _, _, n in results)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "samples": samples,
            "loss": sum(loss * n for loss, _, n in results) / samples,
            "accuracy": sum(c for _, c, _ in results) / samples,
        }


def load_bench_data(cfg: AppConfig, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.set_num_threads(threads)
    return load_digits_tensors(resolve_image_spec(cfg.model))


def memory_run(mode: str, cfg: AppConfig, args: argparse.Namespace) -> dict[str, Any]:
    """`mode` alone in this fresh process: --warmup-steps + one window of steps (the
    peak is reached in the first step and repeats every step), RSS before and after."""
    data = load_bench_data(cfg, args.threads)
    release_free_heap()
    baseline_rss, baseline_peak = current_rss_kib(), peak_rss_kib()
    trainer = ModeTrainer(mode, cfg, args, data)
    after_build_rss = current_rss_kib()
    trainer.run(args.warmup_steps + args.steps_per_window)
    peak = peak_rss_kib()
    return {
        "mode": mode,
        "pid": os.getpid(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "trainable_params": trainer.trainable_params,
        "steps": args.warmup_steps + args.steps_per_window,
        "baseline_rss_kib": baseline_rss,
        "baseline_peak_rss_kib": baseline_peak,
        "after_build_rss_kib": after_build_rss,
        "end_rss_kib": current_rss_kib(),
        "peak_rss_kib": peak,
        "peak_added_kib": peak - baseline_rss,
        # If the peak was reached before the baseline (during imports or data loading),
        # peak - baseline understates the mode: the number is then not trustworthy.
        "peak_reached_in_training": peak > baseline_peak,
    }


def timing_run(cfg: AppConfig, args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """All modes in this process, taking turns window by window (the order rotating
    each round), so a change in the machine's load hits every mode alike. Returns the
    modes' windows and the 1-minute load average after each round."""
    data = load_bench_data(cfg, args.threads)
    trainers = [ModeTrainer(mode, cfg, args, data) for mode in args.modes]
    warmup = {t.mode: t.run(args.warmup_steps) for t in trainers}
    windows: dict[str, list[dict[str, float]]] = {t.mode: [] for t in trainers}
    load_per_round: list[float] = []
    for round_index in range(args.windows):
        shift = round_index % len(trainers)
        for trainer in trainers[shift:] + trainers[:shift]:
            window = trainer.run(args.steps_per_window)
            windows[trainer.mode].append(window)
            log(
                f"round {round_index + 1}/{args.windows} {trainer.mode}: loss={window['loss']:.4f} "
                f"{window['samples'] / window['seconds']:.1f} samples/s, "
                f"{window['samples'] / window['cpu_seconds']:.1f} per CPU-second"
            )
        load_per_round.append(round(os.getloadavg()[0], 2))
    modes = {
        t.mode: {
            "trainable_params": t.trainable_params,
            "total_params": t.total_params,
            "warmup_s": round(warmup[t.mode]["seconds"], 3),
            "window_samples_per_s": [round(w["samples"] / w["seconds"], 2) for w in windows[t.mode]],
            "window_samples_per_cpu_s": [round(w["samples"] / w["cpu_seconds"], 2) for w in windows[t.mode]],
            "window_train_loss": [round(w["loss"], 4) for w in windows[t.mode]],
            "window_train_accuracy": [round(w["accuracy"], 4) for w in windows[t.mode]],
        }
        for t in trainers
    }
    return modes, load_per_round


# --- the comparison ------------------------------------------------------------------------


def child_argv(args: argparse.Namespace, mode: str) -> list[str]:
    """This script re-invoked for one mode's memory run, with every option that shapes it."""
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--run-mode", mode,
        "--config", str(args.config), "--preset", args.preset,
        "--threads", str(args.threads), "--lora-r", str(args.lora_r),
        "--warmup-steps", str(args.warmup_steps), "--steps-per-window", str(args.steps_per_window),
        "--windows", str(args.windows),
    ]
    if args.preset == "vit-small":
        argv += ["--hidden", str(args.hidden), "--layers", str(args.layers),
                 "--image-size", str(args.image_size), "--patch-size", str(args.patch_size)]
    for override in args.override:
        argv += ["--override", override]
    return argv


def run_memory_child(args: argparse.Namespace, mode: str, live_memory: bool) -> dict[str, Any]:
    """One mode's memory run in a fresh process; its logs pass through to stderr, its
    JSON comes back on stdout. live_memory: under LIVE_MEMORY_MALLOC_ENV."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    # The user's own MALLOC_* settings would change what the default-malloc run measures.
    env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    if live_memory:
        env.update(LIVE_MEMORY_MALLOC_ENV)
    done = subprocess.run(child_argv(args, mode), stdout=subprocess.PIPE, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} memory run failed (exit code {done.returncode}); its log is above")
    return json.loads(done.stdout)


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": importlib.metadata.version("peft"),
    }


def summarise_mode(
    timing: dict[str, Any], memory: dict[str, Any], live: dict[str, Any], predicted: dict[str, Any]
) -> dict[str, Any]:
    trainable, total = timing["trainable_params"], timing["total_params"]
    # fp32 parameter state: every weight, plus a gradient and AdamW's two moments per
    # trainable one. What the peak holds beyond this is mostly activations.
    state_bytes = 4 * (total + 3 * trainable)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": round(trainable / total, 5),
        "predicted_trainable_params": predicted["trainable"],
        "matches_plan": trainable == predicted["trainable"] == memory["trainable_params"] == live["trainable_params"],
        "plan": predicted["plan"],
        "samples_per_s": round(statistics.median(timing["window_samples_per_s"]), 2),
        "window_samples_per_s": timing["window_samples_per_s"],
        "samples_per_cpu_s": round(statistics.median(timing["window_samples_per_cpu_s"]), 2),
        "window_samples_per_cpu_s": timing["window_samples_per_cpu_s"],
        "peak_added_mib": mib(memory["peak_added_kib"]),
        "peak_rss_mib": mib(memory["peak_rss_kib"]),
        "baseline_rss_mib": mib(memory["baseline_rss_kib"]),
        "model_built_added_mib": mib(memory["after_build_rss_kib"] - memory["baseline_rss_kib"]),
        "end_added_mib": mib(memory["end_rss_kib"] - memory["baseline_rss_kib"]),
        "live_peak_added_mib": mib(live["peak_added_kib"]),
        "live_peak_rss_mib": mib(live["peak_rss_kib"]),
        "parameter_state_mib": round(state_bytes / 2**20, 1),
        "peak_reached_in_training": memory["peak_reached_in_training"] and live["peak_reached_in_training"],
        "first_window_train_loss": timing["window_train_loss"][0],
        "final_train_loss": timing["window_train_loss"][-1],
        "final_train_accuracy": timing["window_train_accuracy"][-1],
        "window_train_loss": timing["window_train_loss"],
    }


def ratios(mode: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """mode / full. Rates: the median of the ratios within each round (windows run
    back to back), which cancels load that changes between rounds."""
    per_round = {
        key: [m / f for m, f in zip(mode[f"window_{key}"], full[f"window_{key}"])]
        for key in ("samples_per_s", "samples_per_cpu_s")
    }
    keys = ("trainable_params", "peak_added_mib", "live_peak_added_mib", "peak_rss_mib", "final_train_loss")
    return {
        **{key: round(mode[key] / full[key], 4) for key in keys},
        **{key: round(statistics.median(values), 4) for key, values in per_round.items()},
        **{f"{key}_per_round": [round(r, 3) for r in values] for key, values in per_round.items()},
    }


def build_report(
    args: argparse.Namespace,
    cfg: AppConfig,
    machine: dict[str, Any],
    timing: dict[str, dict[str, Any]],
    load_per_round: list[float],
    memory: dict[str, dict[str, dict[str, Any]]],
    predicted: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    modes = {
        mode: summarise_mode(timing[mode], memory["default"][mode], memory["live"][mode], predicted[mode])
        for mode in args.modes
    }
    full_rates = modes["full"]["window_samples_per_s"]
    spread = (max(full_rates) - min(full_rates)) / statistics.median(full_rates)
    training = cfg.training
    return {
        "benchmark": "peft_vs_full",
        "machine": {**machine, "load_avg_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "config": str(args.config),
        "preset": args.preset,
        "overrides": args.override,
        "backbone": cfg.model.backbone.config or cfg.model.backbone.id,
        "image_size": resolve_image_spec(cfg.model).image_size,
        "data_rows": len(load_digits().target),
        "batch_size": training.batch_size,
        "threads": args.threads,
        "lora": {"r": args.lora_r, "alpha": PeftConfig().alpha, "dropout": PeftConfig().dropout},
        "steps": {
            "warmup": args.warmup_steps,
            "per_window": args.steps_per_window,
            "windows": args.windows,
            "total_per_mode": args.warmup_steps + args.windows * args.steps_per_window,
            "memory_runs": args.warmup_steps + args.steps_per_window,
        },
        "optimizer": {
            "lr": training.lr,
            "weight_decay": training.weight_decay,
            "warmup_ratio": training.warmup_ratio,
            "grad_clip_norm": training.grad_clip_norm,
        },
        "modes": modes,
        "ratios_vs_full": {m: ratios(s, modes["full"]) for m, s in modes.items() if m != "full"},
        "full_window_spread": round(spread, 3),
        "load_avg_1m_per_round": load_per_round,
        "noisy": spread > MAX_FULL_SPREAD,
        "memory_runs": memory,
        "notes": (
            "samples/s: all modes train in one process, taking turns window by window "
            "(order rotating each round), after warmup steps; samples_per_s is the median "
            "over a mode's windows and ratios_vs_full.samples_per_s the median of the "
            "per-round ratios. full_window_spread: (max - min) / median of full's window "
            "rates (noisy when > 0.25: the machine's load moved a lot; the paired ratios "
            "still compare like with like). samples_per_cpu_s: samples per second of this "
            "process's CPU time (time.process_time, all threads) over the same windows: "
            "what a step costs in compute, much less sensitive than wall time to other "
            "processes taking the cores (time-slicing), though not to their use of caches "
            "and memory bandwidth. Memory: every mode also runs alone in a fresh "
            "process for warmup steps + one window. peak_added_mib: its peak RSS "
            "(getrusage ru_maxrss) minus its RSS after imports and data loading, measured "
            "just before the model is built after gc and malloc_trim: model + gradients + "
            "AdamW state + activations + heap glibc keeps after frees (default malloc, as "
            "in training). end_added_mib: the same for the RSS after the last step. "
            "live_peak_added_mib: the same from a run with MALLOC_MMAP_THRESHOLD_=65536, "
            "where freed tensors return to the OS at once: close to the peak of live "
            "tensors. peak_rss_mib is the whole process (Python, torch, transformers, peft, "
            "data). model_built_added_mib: RSS after building the model and optimizer "
            "(before any step). parameter_state_mib: 4 bytes x (all parameters + 3 x "
            "trainable ones: gradient, exp_avg, exp_avg_sq). The backbone is built from a "
            "config dict, so its weights are random, not pretrained: the loss comparison "
            "says only that each mode trains, not how well PEFT adapts a pretrained model. "
            "Every mode starts from the same backbone weights, sees the same batches and "
            "dropout RNG stream. ratios_vs_full: mode / full."
        ),
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def compare_modes(args: argparse.Namespace, cfg: AppConfig) -> dict[str, Any]:
    machine = machine_info()
    num_labels = len(load_digits().target_names)
    predicted = {mode: predicted_trainable(mode, cfg, args, num_labels) for mode in args.modes}
    for mode in args.modes:
        log(f"{mode}: {predicted[mode]['plan']}")
    memory: dict[str, dict[str, dict[str, Any]]] = {"default": {}, "live": {}}
    for kind, mode in itertools.product(memory, args.modes):
        log(f"memory run ({kind} malloc): {mode} in a fresh process")
        memory[kind][mode] = run_memory_child(args, mode, live_memory=kind == "live")
    log(f"timed run: {', '.join(args.modes)} taking turns, {args.windows} rounds, {args.threads} thread(s)")
    timing, load_per_round = timing_run(cfg, args)
    return build_report(args, cfg, machine, timing, load_per_round, memory, predicted)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare trainable parameters, peak memory and samples/s of LoRA "
        "(and ExPLoRA) against full fine-tuning on the same backbone, data and steps (CPU).",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG,
        help="app config YAML for the training recipe and head (default: configs/digits_lora.yaml)",
    )
    parser.add_argument(
        "--preset", choices=("vit-small", "digits"), default="vit-small",
        help="vit-small: the config's ViT resized by --hidden/--layers/--image-size/--patch-size "
        "(heads = hidden / 64, MLP = 4 x hidden); digits: the config's backbone as it is (default: vit-small)",
    )
    parser.add_argument(
        "--hidden", type=int, default=None, help=f"vit-small hidden size (default: {VIT_SMALL['hidden']})"
    )
    parser.add_argument("--layers", type=int, default=None, help=f"vit-small blocks (default: {VIT_SMALL['layers']})")
    parser.add_argument(
        "--image-size", type=int, default=None,
        help=f"vit-small input side; the 8x8 digits are upscaled to it (default: {VIT_SMALL['image_size']})",
    )
    parser.add_argument(
        "--patch-size", type=int, default=None, help=f"vit-small patch side (default: {VIT_SMALL['patch_size']})"
    )
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8, the PeftConfig default)")
    parser.add_argument(
        "--modes", default=",".join(MODES),
        help=f"comma-separated modes to run; full is the baseline of the ratios (default: {','.join(MODES)})",
    )
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument(
        "--steps-per-window", type=int, default=10, help="optimizer steps per timed window (default: 10)"
    )
    parser.add_argument(
        "--windows", type=int, default=8, help="timed windows per mode, taken in turns (default: 8)"
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op torch threads (default: 1)")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override, repeatable, applied last, e.g. --override training.batch_size=64",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON")
    # Internal: the memory run of one mode, in the fresh process the parent starts.
    parser.add_argument("--run-mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    size_flags = {name: getattr(args, name) for name in VIT_SMALL}
    if args.preset == "digits" and any(v is not None for v in size_flags.values()):
        parser.error(
            "--hidden/--layers/--image-size/--patch-size size the vit-small preset; drop them with --preset digits"
        )
    for name, value in size_flags.items():
        setattr(args, name, VIT_SMALL[name] if value is None else value)
    if args.preset == "vit-small" and args.image_size % args.patch_size:
        parser.error(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    if args.preset == "vit-small" and args.hidden % HEAD_DIM:
        parser.error(f"--hidden must be a multiple of {HEAD_DIM} (the head width)")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if "full" not in args.modes:
        parser.error("--modes must include full: the ratios are against it")
    for name in ("warmup_steps", "steps_per_window", "windows", "threads", "lora_r", "layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_bench_config(args)
        if args.run_mode is not None:
            print(json.dumps(memory_run(args.run_mode, cfg, args)), flush=True)
            return 0
        report = compare_modes(args, cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PeftSetupError as exc:  # e.g. --layers 1 leaves ExPLoRA no block for adapters
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_report(report, args.output)
    print(json.dumps(report, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
