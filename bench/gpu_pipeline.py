"""The whole pipeline on GPUs against plain PyTorch on the same model, data and batch.

What it measures
----------------
One model (ViT-B/16 built from a config dict: 86 M parameters, 224x224 RGB, or a tiny
ViT for `--size tiny`), one data set (`--rows` shifted and noised digits as PNGs in a
parquet file, generated here), one batch size:

* plain: an in-process PyTorch loop with the whole batch already on the device (uint8
  pixels normalised there, as ray-app does), AdamW (fused on a GPU), autocast at the
  training precision, gradient clipping: the ceiling for the model on this device.
  Baseline (every weight trained) and PEFT (LoRA r=8 on every attention and MLP
  projection);
* ray-app: `ray-app run` on the same data and model, every stage (splits, train,
  calibrate, evaluate, insights, export): seconds from the start to the first
  training step, each stage's seconds, the steady training samples/s (median of the
  epochs after the first), and a PEFT run's training; the ratio to plain is the
  target (>= 0.95 on an H200);
* the logits pass (Ray Data batch inference over val_calib + val_test) against a bare
  forward loop over the same rows on the device (target >= 0.8);
* Serve (`--serve`): the exported bundle on Ray Serve on the device, images/s from 64
  clients sending 1 and 16 images per request, against the bare forward at the
  training precision (target >= 0.5 with 16 per request);
* MFU: the FLOP counter's training FLOPs per sample x samples/s / `--peak-tflops`
  (an H200's dense bf16 peak, ~790 TFLOP/s measured), for plain and ray-app, and for
  `--speed-options` (torch.compile, fused AdamW, TF32) when asked.

`--device cpu --size tiny` runs the same in well under two minutes on 2 CPU cores (a
test runs it, so the script cannot rot); its numbers say nothing about GPUs.

How to run
----------
    python bench/gpu_pipeline.py                          # one or more GPUs, ViT-B/16, 12,000 images
    python bench/gpu_pipeline.py --device cpu --size tiny --rows 400 --epochs 2

Only the JSON is printed on stdout (progress goes to stderr); it is also written to
`--out` (default bench/results/gpu_pipeline.json). Quote it in BENCHMARKS.md with the
machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/gpu_pipeline.py` from anywhere
    sys.path.insert(0, str(REPO))

SIZES: dict[str, dict[str, Any]] = {
    "vit-b": {"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768,
              "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"model_type": "vit", "image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}
TARGETS = {"train_vs_plain": 0.95, "mfu_with_speed_options": 0.5, "first_step_s": 30.0, "whole_run_s": 120.0,
           "logits_vs_bare_forward": 0.8, "serve_vs_bare_forward_16": 0.5}


def log(message: str) -> None:
    print(f"[gpu_pipeline] {message}", file=sys.stderr, flush=True)


# --- data and config ----------------------------------------------------------------------


def make_data(path: Path, rows: int, image_size: int, seed: int = 0) -> None:
    """`rows` digits, each shifted, scaled to `image_size`, noised, as RGB PNGs with their
    labels in a parquet file."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(rows):
        index = int(rng.integers(len(digits.images)))
        small = np.rint(digits.images[index] * (255 / 16)).astype(np.uint8)
        shifted = np.roll(small, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
        big = np.asarray(Image.fromarray(shifted).resize((image_size, image_size), Image.Resampling.BILINEAR))
        noisy = np.clip(big.astype(np.int16) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).convert("RGB").save(buffer, format="PNG")
        images.append(buffer.getvalue())
        labels.append(str(int(digits.target[index])))
    pd.DataFrame({"image": images, "label": labels}).to_parquet(path)


def bench_config(args: argparse.Namespace, data: Path, root: Path, mode: str, speed: bool = False) -> Any:
    from ray_app.config import validate_config

    gpus = gpu_count() if args.device == "cuda" else 0
    raw = {
        "name_pattern": "{dataset}_{mode}" + ("_fast" if speed else ""),
        "data": {"source": {"kind": "parquet", "path": str(data), "image_column": "image"}},
        "model": {"backbone": {"config": SIZES[args.size]}},
        "training": {"mode": mode, "epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-4,
                     "precision": args.precision if gpus else "fp32", "eval_batch_size": args.batch_size,
                     "compile": speed, "early_stopping": {"patience": None}},
        "scaling": {"use_gpu": bool(gpus), "num_workers": max(1, gpus),
                    "cpus_per_worker": max(1, (os.cpu_count() or 2) // max(2, 2 * gpus))},
        # Every calibration tool runs and is timed; the bundle's rule is `none`, which a
        # model trained for a few epochs on noisy digits always satisfies.
        "calibration": {"policy": "none", "guardrail": {"max_concurrent_trials": 4} if args.size != "tiny" else
                        {"max_concurrent_trials": 4, "centers": [0.5, 0.7], "widths": [0.1]}},
        "storage": {"root": str(root)},
    }
    return validate_config(raw, "gpu_pipeline config")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --- plain PyTorch --------------------------------------------------------------------------


def plain_loop(cfg: Any, spec: Any, pixels: Any, labels: Any, device: str, steps: int, warmup: int,
               speed: bool = False) -> dict[str, Any]:
    """The training step of ray-app's loop with nothing around it: the batch is on the
    device before the clock starts. Returns steady samples/s."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from ray_app.budget import build_model
    from trainers.optim import param_groups
    from trainers.preprocess import model_inputs
    from trainers.train_loop import autocast_dtype, speed_options

    training = cfg.training
    options = speed_options(training, torch.device(device))
    model = build_model(cfg, 10).to(device).train()
    forward = torch.compile(model) if speed else model
    optimizer = torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.lr,
                                  fused=options["fused_optimizer"] or None)
    dtype = autocast_dtype(training.precision, torch.device(device))
    batch = {"pixel_values": pixels[: training.batch_size].to(device)}
    target = labels[: training.batch_size].to(device)
    timings = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(forward(**model_inputs(batch, spec)).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip_norm or 1.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    return {"samples_per_s": round(training.batch_size / median, 1), "step_ms_median": round(median * 1000, 2),
            "steps": steps}


def bare_forward(model_dir: Path, spec: Any, pixels: Any, batch_size: int, device: str, precision: str,
                 repeats: int = 3) -> dict[str, Any]:
    """The saved model's forward over `pixels` (already on the device) at the training
    precision, nothing else: the ceiling of the logits pass and of Serve."""
    import contextlib

    import torch

    from trainers.model import load_classifier
    from trainers.predict import InferenceDevice
    from trainers.preprocess import model_inputs

    model = load_classifier(model_dir)[0].to(device).eval()
    dtype = InferenceDevice(num_gpus=1 if device == "cuda" else 0, precision=precision).autocast_dtype(
        torch.device(device))
    pixels = pixels.to(device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for start in range(0, len(pixels), batch_size):
                with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
                    model(**model_inputs({"pixel_values": pixels[start : start + batch_size]}, spec))
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    return {"rows_per_s": round(len(pixels) / best, 1), "rows": len(pixels), "batch_size": batch_size}


# --- ray-app ------------------------------------------------------------------------------


class FirstStep(threading.Thread):
    """When rank 0's progress file first shows a training step, seen from its file."""

    def __init__(self, path: Path, started: float) -> None:
        super().__init__(daemon=True)
        self.path, self.started = path, started
        self.seconds: float | None = None
        self.at: float | None = None  # wall-clock time of the first step
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05) and self.seconds is None:
            try:
                if json.loads(self.path.read_text()).get("step", 0) >= 1:
                    self.seconds, self.at = round(time.monotonic() - self.started, 2), time.time()
            except (OSError, ValueError):
                continue


def ray_app_run(cfg: Any, stages: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """`ray-app run` in this process: the context checked, Ray joined, the stages run;
    seconds to the first step, each stage's seconds, steady training samples/s."""
    from ray_app.ray_runtime import init_ray
    from ray_app.stages import STAGES, run_pipeline
    from ray_app.stages.context import StageContext

    started = time.monotonic()
    ctx = StageContext.for_config(cfg)
    watcher = FirstStep(ctx.run.train.progress, started)
    watcher.start()
    ctx.check()
    init_ray(cfg)
    run_pipeline(ctx, stages or STAGES, rerun_from="splits")
    total = time.monotonic() - started
    watcher.done.set()
    stages_info = ctx.run.metadata()["stages"]
    train_started = datetime.fromisoformat(stages_info["train"]["started"]).timestamp()
    history = [json.loads(line) for line in ctx.run.train.metrics.read_text().splitlines()]
    steady = [r["train/samples_per_s"] for r in history[1:]] or [r["train/samples_per_s"] for r in history]
    return {
        "run": ctx.run.name, "total_s": round(total, 2), "first_step_s": watcher.seconds,
        # the stage's start is recorded to the second
        "first_step_after_train_start_s": None if watcher.at is None else round(watcher.at - train_started, 1),
        "stage_seconds": {name: info.get("seconds") for name, info in stages_info.items()},
        "samples_per_s": round(statistics.median(steady), 1),
        "epoch_samples_per_s": [round(r["train/samples_per_s"], 1) for r in history],
        "budget": stages_info.get("train", {}).get("budget"), "data": stages_info.get("train", {}).get("data"),
    }


def logits_pass(cfg: Any) -> dict[str, Any]:
    """ray-app's logits pass over val_calib + val_test, timed as a whole."""
    from ray_app.runs import Run
    from ray_app.splits import SplitReader
    from ray_app.stages.context import StageContext
    from trainers.predict import predict_outputs

    ctx = StageContext(cfg, Run.for_config(cfg))
    reader = SplitReader(ctx.run.splits_dir)
    splits = {s: reader.read(s, "predict") for s in ("val_calib", "val_test")}
    rows = sum(reader.summary()["splits"][s]["count"] for s in splits)
    started = time.perf_counter()
    predict_outputs(splits, ctx.input_spec, ctx.run.train.model_dir, cfg.training.eval_batch_size, features=True,
                    keep=("content_hash", "ref"), where=ctx.inference_device)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1)}


# --- Serve ----------------------------------------------------------------------------------


def serve_rate(bundle: Path, device: str, precision: str, images: list[bytes], per_request: int, clients: int,
               seconds: float) -> dict[str, Any]:
    """Images/s from `clients` concurrent clients, each sending `per_request` images per
    request for `seconds`, against the bundle on Ray Serve."""
    import asyncio
    import base64

    import aiohttp
    from ray import serve

    from ray_app.cli.serve import start_serving
    from ray_app.ray_runtime import free_port
    from serve.config import ServeConfig

    config = ServeConfig(bundle=str(bundle), port=free_port(), num_gpus_per_replica=0.5 if device == "cuda" else 0,
                         precision=precision if device == "cuda" else "fp32", max_batch_size=256)
    url = start_serving(config)
    encoded = [base64.b64encode(image).decode() for image in images]

    async def client(session: aiohttp.ClientSession, stop: float, index: int) -> tuple[int, int]:
        done = errors = 0
        while time.monotonic() < stop:
            chosen = [encoded[(index + done + k) % len(encoded)] for k in range(per_request)]
            async with session.post(f"{url}/predict", json={"inputs": [{"image": x} for x in chosen]}) as response:
                await response.read()
                done, errors = done + per_request, errors + (response.status != 200)
        return done, errors

    async def load() -> tuple[int, int, float]:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session, time.monotonic() + 2, i) for i in range(clients)))  # warm
            started = time.monotonic()
            results = await asyncio.gather(*(client(session, started + seconds, i) for i in range(clients)))
            return sum(r[0] for r in results), sum(r[1] for r in results), time.monotonic() - started

    try:
        done, errors, elapsed = asyncio.run(load())
    finally:
        serve.shutdown()
    return {"images_per_s": round(done / elapsed, 1), "per_request": per_request, "clients": clients,
            "errors": errors}


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray
    import torch

    from ray_app.budget import build_model, model_flops, synthetic_batch
    from ray_app.stages import SPLITS, TRAIN
    from ray_app.stages.context import StageContext
    from trainers.preprocess import preprocess_image_batch

    device = args.device
    data = work / "images.parquet"
    started = time.monotonic()
    make_data(data, args.rows, SIZES[args.size]["image_size"])
    log(f"{args.rows} images of {SIZES[args.size]['image_size']} px in {time.monotonic() - started:.1f}s")
    baseline, peft = (bench_config(args, data, work / "runs", mode) for mode in ("baseline", "peft"))
    spec = StageContext.for_config(baseline).input_spec
    import pandas as pd

    frame = pd.read_parquet(data).head(max(args.batch_size, 512))
    batch = preprocess_image_batch({"image": frame["image"].to_numpy(), "label_id": frame["label"].astype(int).to_numpy()},
                                   spec)
    pixels, labels = torch.as_tensor(batch["pixel_values"]), torch.as_tensor(batch["labels"])
    per_sample = model_flops(build_model(baseline, 10, on_meta=True), synthetic_batch(baseline, 1, 10, "meta"))
    train_flops = per_sample["forward"] + per_sample["backward"]

    def mfu(samples_per_s: float) -> float:
        return round(train_flops * samples_per_s / (args.peak_tflops * 1e12), 4)

    result: dict[str, Any] = {"size": args.size, "device": device, "gpus": gpu_count(), "rows": args.rows,
                              "batch_size": args.batch_size, "precision": baseline.training.precision,
                              "train_gflop_per_sample": round(train_flops / 1e9, 6), "peak_tflops": args.peak_tflops}
    log("plain loops")
    result["plain"] = {name: plain_loop(cfg, spec, pixels, labels, device, args.steps, args.warmup)
                       for name, cfg in (("baseline", baseline), ("peft", peft))}
    log("ray-app run, every stage")
    result["ray_app"] = {"baseline": ray_app_run(baseline)}
    log("ray-app train, peft")
    result["ray_app"]["peft"] = ray_app_run(peft, (SPLITS, TRAIN))
    for name in ("baseline", "peft"):
        plain, ours = result["plain"][name]["samples_per_s"], result["ray_app"][name]["samples_per_s"]
        result[f"{name}_vs_plain"] = round(ours / plain, 3)
        result["plain"][name]["mfu"], result["ray_app"][name]["mfu"] = mfu(plain), mfu(ours)
    log("logits pass vs bare forward")
    model_dir = StageContext.for_config(baseline).run.train.model_dir
    result["logits_pass"] = logits_pass(baseline)
    result["bare_forward"] = bare_forward(model_dir, spec, pixels, args.batch_size, device, baseline.training.precision)
    result["logits_vs_bare_forward"] = round(result["logits_pass"]["rows_per_s"]
                                             / result["bare_forward"]["rows_per_s"], 3)
    if args.speed_options:
        log("speed options: torch.compile, fused AdamW, TF32")
        fast = bench_config(args, data, work / "runs", "baseline", speed=True)
        result["speed_options"] = {"plain": plain_loop(fast, spec, pixels, labels, device, args.steps, args.warmup,
                                                       speed=True), "ray_app": ray_app_run(fast, (SPLITS, TRAIN))}
        for side in ("plain", "ray_app"):
            result["speed_options"][side]["mfu"] = mfu(result["speed_options"][side]["samples_per_s"])
    if args.serve:
        log("Serve")
        images = list(pd.read_parquet(data)["image"].head(256))
        bundle = StageContext.for_config(baseline).run.bundle_dir
        result["serve"] = {f"per_request_{n}": serve_rate(bundle, device, baseline.training.precision, images, n,
                                                          args.clients, args.serve_seconds) for n in (1, 16)}
        result["serve_vs_bare_forward_16"] = round(result["serve"]["per_request_16"]["images_per_s"]
                                                   / result["bare_forward"]["rows_per_s"], 3)
    ray.shutdown()
    result["targets"] = TARGETS
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="vit-b")
    parser.add_argument("--rows", type=int, default=12_000, help="images generated (default 12000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each plain loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--speed-options", action="store_true", help="also run with torch.compile, fused AdamW, TF32")
    parser.add_argument("--serve", action="store_true", help="also measure Ray Serve at 64 clients")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--serve-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_pipeline.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and gpu_count() == 0:
        parser.error("--device cuda: torch sees no GPU here; use --device cpu --size tiny for the CPU mode")
    return args


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from ray_app.ray_runtime import serve_environment

    args = parse_args(argv)
    # stdout carries the JSON alone: what Ray, Tune and the stages print meanwhile goes
    # to stderr (file-descriptor level: Ray's processes write to fd 1 directly).
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        # Serve's settings (HAProxy ingress) are read when Ray starts: before the pipeline starts it.
        with tempfile.TemporaryDirectory(prefix="gpu_pipeline-") as tmp, (
                serve_environment() if args.serve else contextlib.nullcontext()):
            result = run(args, Path(tmp))
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    text = json.dumps(result, indent=2, sort_keys=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
