"""The compute budget of a config, before a run: what one epoch will process and cost.

- rows per split (from the run's splits when written, else planned from the source
  exactly as the splits stage would);
- what an epoch feeds the model: for text, the real tokens after the tokenizer, with
  the padding up to `max_length` counted apart (the model computes on it all the same);
  for images, the patches (tokens) of a patch-based backbone;
- parameters, total and trainable (PEFT trains a few);
- forward and backward FLOPs, counted by `torch.utils.flop_counter` on the model's
  architecture built on the meta device (no weights, no compute: free whatever its
  size; one batch, scaled by the rows: every count is linear in the batch) — matrix
  products, convolutions and attention, the operations that dominate;
- the epoch's training time, where the run trains:
  - a CPU config: a micro-benchmark of a few real training steps of the real model on
    this machine (optimizer and gradient clipping included) with the threads a worker
    gets, bounded to `budget.max_probe_seconds` — a model too large for that is timed
    on a smaller batch and the step extrapolated by the batch ratio;
  - a GPU config on a machine with a GPU: the same steps on it, at the training
    precision;
  - a GPU config on a machine without one: estimated from the FLOP count (on the
    meta device: no weights, no compute) at `budget.gpu_tflops`, and said so. Nothing
    ever times a GPU model on a CPU.

The result is cached by a fingerprint of the data files (paths, sizes, modification
times; the library version for the digits that ship with scikit-learn), the config
sections it depends on and the machine, so asking again costs a file read. The train
stage records the estimate and, after training, the measured epoch time beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.config import SPLIT_NAMES, AppConfig, SourceConfig, is_local_path

if TYPE_CHECKING:
    from ray_app.splits import SplitReader

BUDGET_FORMAT_VERSION = 2  # 2: steps timed where the run trains, bounded on CPUs
FLOP_BATCH = 2  # samples in the counted batch: FLOPs are linear in it


# --- the cache key ------------------------------------------------------------------------


def _path_stamp(path: str) -> dict[str, Any]:
    """Sizes and modification times of a local file or of every file under a local
    directory (no content read: a data set may be large); a URI stands for itself."""
    if not is_local_path(path):
        return {"uri": path}
    root = Path(path.removeprefix("file://"))
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.exists() else []
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if root.is_dir() else file.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {"path": str(root.resolve()), "files": len(files), "stamp": digest.hexdigest()[:16]}


def source_stamp(source: SourceConfig) -> dict[str, Any]:
    """What identifies the data as it is on disk now, without reading it."""
    if source.kind == "sklearn_digits":
        return {"kind": source.kind, "scikit-learn": version("scikit-learn")}
    assert source.path is not None
    return {"kind": source.kind, **_path_stamp(source.path)}


def budget_inputs(cfg: AppConfig) -> dict[str, Any]:
    """Everything the budget depends on: the data, the splits, the model and its
    preprocessing, the batch sizes and mode, the worker's CPUs, the benchmark settings
    and this machine. The learning rate and the like are not in it."""
    training = cfg.training
    model = cfg.model.model_dump(mode="json")
    local_dirs = [p for p in (cfg.model.preprocessing.tokenizer, cfg.model.backbone.id) if p and Path(p).is_dir()]
    return {
        "format_version": BUDGET_FORMAT_VERSION,
        "source": source_stamp(cfg.data.source),
        "local_model_files": [_path_stamp(p) for p in local_dirs],
        "seed": cfg.seed,
        "data": cfg.data.model_dump(mode="json"),
        "model": model,
        "training": {
            "mode": training.mode,
            "peft": None if training.peft is None else training.peft.model_dump(mode="json"),
            "batch_size": training.batch_size,
            "eval_batch_size": training.eval_batch_size,
            "epochs": training.epochs,
            "grad_clip_norm": training.grad_clip_norm,
            "ema": training.ema.enabled,
        },
        "scaling": cfg.scaling.model_dump(mode="json", include={"num_workers", "use_gpu", "cpus_per_worker"}),
        "benchmark": cfg.budget.model_dump(mode="json", include={"benchmark_steps", "warmup_steps", "max_probe_seconds",
                                                                 "gpu_tflops"}),
        "precision": training.precision,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch": version("torch")},
    }


def budget_key(cfg: AppConfig) -> str:
    blob = json.dumps(budget_inputs(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(cfg: AppConfig) -> Path:
    return Path(cfg.budget.cache_dir) if cfg.budget.cache_dir else Path(cfg.storage.root) / ".cache" / "budget"


def cache_path(cfg: AppConfig) -> Path:
    return cache_dir(cfg) / f"{budget_key(cfg)}.json"


def log_path(cfg: AppConfig) -> Path:
    """Where what Ray and the micro-benchmark print goes while a budget is measured
    outside any run."""
    return cache_dir(cfg) / "budget.log"


# --- the data ---------------------------------------------------------------------------


def _split_texts_and_counts(cfg: AppConfig, reader: SplitReader | None) -> tuple[dict[str, int], dict[str, list[str]], list[str]]:
    """(rows per split, texts of train and val_select (text data only), label names):
    from the written splits of this config when the caller has them, else planned from
    the source the way the splits stage plans them (this needs Ray Data)."""
    from ray_app.ray_runtime import init_ray
    from ray_app.splits import read_and_plan

    text = cfg.data.source.modality == "text"
    if reader is not None:
        summary = reader.summary()
        counts = {s: summary["splits"][s]["count"] for s in SPLIT_NAMES}
        texts = {
            s: [str(t) for t in reader.read_table(s, "budget", columns=["text"]).column("text").to_pylist()]
            for s in ("train", "val_select")
        } if text else {}
        return counts, texts, summary["label_names"]
    init_ray(cfg)
    inspected, plan = read_and_plan(cfg)
    counts = {s: plan.summary["splits"][s]["count"] for s in SPLIT_NAMES}
    texts: dict[str, list[str]] = {}
    if text:
        frame = inspected.select_columns(["text", "content_hash"]).to_pandas()
        where = frame["content_hash"].map(plan.assignment)
        texts = {s: [str(t) for t in frame["text"][where == s]] for s in ("train", "val_select")}
    return counts, texts, plan.label_names


def token_counts(texts: list[str], tokenizer: Any, max_length: int) -> dict[str, int]:
    """Tokens the model is fed for these texts, padded to `max_length` as in training:
    the real ones (after truncation), the padding, and how many texts were cut."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]] if texts else []
    real = sum(min(n, max_length) for n in lengths)
    return {
        "rows": len(lengths),
        "real": real,
        "padding": len(lengths) * max_length - real,
        "total": len(lengths) * max_length,
        "truncated_rows": sum(1 for n in lengths if n > max_length),
    }


# --- the model ---------------------------------------------------------------------------


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU kernels of scaled-dot-product attention, which
    torch's counter does not know (it counts the CUDA ones): the same formulas."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def timing(cfg: AppConfig) -> str:
    """How the epoch is timed: "cpu" or "cuda" (measured here), or "estimated" (a GPU
    config on a machine without a GPU)."""
    if not cfg.scaling.use_gpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "estimated"


def build_model(cfg: AppConfig, num_labels: int, on_meta: bool = False) -> Any:
    """The classifier exactly as a worker trains it (adapters on for PEFT, the
    backbone frozen for a linear probe). Weights do not matter here: model.init_from
    changes the values, not the cost. `on_meta`: the architecture alone on the meta
    device, for counting without memory or compute."""
    import torch

    from trainers.adapters import PeftSetup, apply_adapters
    from trainers.model import build_classifier

    peft = cfg.training.peft if cfg.training.mode == "peft" else None
    if on_meta:
        with torch.device("meta"):
            classifier = build_classifier(cfg.model, num_labels, weights=False)
            if peft is not None:
                apply_adapters(classifier, peft)
        return classifier
    torch.manual_seed(cfg.seed)
    if peft is not None:
        return PeftSetup(model=cfg.model, peft=peft, num_labels=num_labels, seed=cfg.seed).build()
    return build_classifier(cfg.model, num_labels)


def synthetic_batch(cfg: AppConfig, batch_size: int, num_labels: int, device: str = "cpu") -> dict[str, Any]:
    """Inputs of the shape training feeds, on `device`: the cost depends on shapes, not
    values. Text is all real tokens (attention mask 1): padded positions cost the same."""
    import torch

    from trainers.model import backbone_config
    from trainers.preprocess import resolve_image_spec

    generator = torch.Generator().manual_seed(cfg.seed)
    labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    if cfg.data.source.modality == "image":
        spec = resolve_image_spec(cfg.model)
        pixels = torch.randn(batch_size, spec.num_channels, spec.image_size, spec.image_size, generator=generator)
        return {k: v.to(device) for k, v in {"pixel_values": pixels, "labels": labels}.items()}
    length = cfg.model.preprocessing.max_length
    vocab = int(getattr(backbone_config(cfg.model.backbone), "vocab_size", 1000))
    ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if device == "meta":
        # A mask of all ones changes no FLOP, and transformers inspects a mask's values,
        # which meta tensors do not have.
        del batch["attention_mask"]
    return {k: v.to(device) for k, v in batch.items()}


def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


def model_flops(model: Any, batch: dict[str, Any]) -> dict[str, float]:
    """FLOPs per sample: a training forward, its backward (only the gradients training
    computes: none for frozen weights), and an inference forward (every view)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    size = len(batch["labels"])
    formulas = _cpu_attention_formulas()
    model.train()
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        loss = F.cross_entropy(model(**_inputs(batch)), batch["labels"])
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        loss.backward()
    backward = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        model(**_inputs(batch))
    inference = counter.get_total_flops()
    return {"forward": forward / size, "backward": backward / size, "inference": inference / size}


def _step_timer(model: Any, cfg: AppConfig, num_labels: int, device: str) -> Any:
    """A function timing one real training step (forward, loss, backward, gradient
    clipping, AdamW step) at a given batch size on `device`, at the training precision."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from trainers.optim import param_groups
    from trainers.train_loop import autocast_dtype

    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.training.weight_decay), lr=1e-3)  # the rate does not change a step's time
    dtype = autocast_dtype(cfg.training.precision, torch.device(device))
    batches: dict[int, dict[str, Any]] = {}

    def step(batch_size: int) -> float:
        batch = batches.setdefault(batch_size, synthetic_batch(cfg, batch_size, num_labels, device))
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(**_inputs(batch)).float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.training.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip_norm)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return step


def benchmark_steps(model: Any, cfg: AppConfig, num_labels: int, device: str = "cpu") -> dict[str, Any]:
    """Seconds per training step of the real loop's work on the configured batch, with
    as many threads as a worker's CPUs: warm-up steps first, then the median of the
    timed ones. On a CPU the whole benchmark is bounded by `budget.max_probe_seconds`:
    a step on one sample says what a sample costs; when the configured batch would not
    fit the bound, the steps run on the largest batch that does (as many as fit) and
    the median is scaled by the batch ratio (per-sample cost is what grows with it)."""
    import torch

    threads = max(1, int(cfg.scaling.cpus_per_worker))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    budget, batch = cfg.budget, cfg.training.batch_size
    try:
        step = _step_timer(model, cfg, num_labels, device)
        timed_batch, warmup, steps, timings = batch, budget.warmup_steps, budget.benchmark_steps, []
        if device == "cpu" and batch > 1:
            timings = [step(1), step(1)][1:]  # the first warms up; the second is one sample's cost
            fits = int(budget.max_probe_seconds / (max(timings[0], 1e-9) * (warmup + steps)))
            if fits < batch:
                # Too slow for the configured batch: time the largest batch that fits, or
                # stop at the probe itself when not even one sample does.
                timed_batch = max(1, fits)
                warmup = 0 if fits == 0 else warmup
                steps = 1 if fits == 0 else steps
            else:
                timings = []
        for _ in range(warmup):
            step(timed_batch)
        timings = timings or [step(timed_batch) for _ in range(steps)]
    finally:
        torch.set_num_threads(previous)
    scale = batch / timed_batch
    return {
        "device": device,
        "method": "measured" if timed_batch == batch else f"measured on batch {timed_batch}, scaled to {batch}",
        "threads": threads,
        "batch_size": timed_batch,
        "warmup_steps": warmup,
        "steps": len(timings),
        "step_seconds": [round(t, 5) for t in timings],
        "step_seconds_median": statistics.median(timings) * scale,
    }


def estimated_steps(per_sample: dict[str, float], cfg: AppConfig) -> dict[str, Any]:
    """A GPU config sized on a machine without a GPU: a step's training FLOPs at the
    stated sustained rate of one GPU (`budget.gpu_tflops`)."""
    step_flops = (per_sample["forward"] + per_sample["backward"]) * cfg.training.batch_size
    return {
        "device": "cuda",
        "method": f"estimated from FLOPs at {cfg.budget.gpu_tflops:g} TFLOP/s per GPU (no GPU on this machine)",
        "threads": 0,
        "batch_size": cfg.training.batch_size,
        "warmup_steps": 0,
        "steps": 0,
        "step_seconds": [],
        "step_seconds_median": step_flops / (cfg.budget.gpu_tflops * 1e12),
    }


def _input_sizes(cfg: AppConfig, counts: dict[str, int], texts: dict[str, list[str]]) -> dict[str, Any]:
    from trainers.model import backbone_config

    if cfg.data.source.modality == "text":
        from trainers.preprocess import load_tokenizer, resolve_text_spec

        spec = resolve_text_spec(cfg.model)
        tokenizer = load_tokenizer(spec)
        per_split = {s: token_counts(texts[s], tokenizer, spec.max_length) for s in ("train", "val_select")}
        return {"kind": "text", "max_length": spec.max_length, "tokens_per_epoch": per_split["train"],
                "val_select_tokens": per_split["val_select"]}
    from trainers.preprocess import resolve_image_spec

    spec = resolve_image_spec(cfg.model)
    backbone = backbone_config(cfg.model.backbone)
    patch = getattr(backbone, "patch_size", None)
    sizes: dict[str, Any] = {"kind": "image", "image_size": spec.image_size, "channels": spec.num_channels,
                             "views": len(cfg.model.views)}
    if isinstance(patch, int) and patch > 0:
        patches = (spec.image_size // patch) ** 2
        sizes.update(patch_size=patch, patches_per_sample=patches, sequence_length=patches + 1,
                     patches_per_epoch=patches * counts["train"])
    return sizes


def estimate_budget(cfg: AppConfig, reader: SplitReader | None = None) -> dict[str, Any]:
    """The budget, computed (no cache)."""
    started = time.monotonic()
    counts, texts, label_names = _split_texts_and_counts(cfg, reader)
    inputs = _input_sizes(cfg, counts, texts)
    num_labels = len(label_names)
    method = timing(cfg)
    architecture = build_model(cfg, num_labels, on_meta=True)  # counted without memory or compute
    total = sum(p.numel() for p in architecture.parameters())
    trainable = sum(p.numel() for p in architecture.parameters() if p.requires_grad)
    per_sample = model_flops(architecture, synthetic_batch(cfg, FLOP_BATCH, num_labels, "meta"))
    bench = (estimated_steps(per_sample, cfg) if method == "estimated"
             else benchmark_steps(build_model(cfg, num_labels), cfg, num_labels, method))
    world = cfg.scaling.num_workers
    steps_per_epoch = max(1, math.ceil(math.ceil(counts["train"] / world) / cfg.training.batch_size))
    train_forward = per_sample["forward"] * counts["train"]
    train_backward = per_sample["backward"] * counts["train"]
    validation = per_sample["inference"] * counts["val_select"]
    epoch_seconds = steps_per_epoch * bench["step_seconds_median"]
    return {
        "format_version": BUDGET_FORMAT_VERSION,
        "computed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "compute_seconds": round(time.monotonic() - started, 3),
        "data": {"modality": cfg.data.source.modality, "source": source_stamp(cfg.data.source),
                 "rows": counts, "classes": num_labels},
        "inputs": inputs,
        "parameters": {"total": total, "trainable": trainable, "trainable_share": trainable / max(total, 1),
                       "mode": cfg.training.mode},
        "flops": {
            "method": "torch.utils.flop_counter on the model's architecture (meta device: no weights, no "
            "compute): matrix products, convolutions, attention",
            "forward_per_sample": per_sample["forward"],
            "backward_per_sample": per_sample["backward"],
            "inference_per_sample": per_sample["inference"],
            "train_forward_per_epoch": train_forward,
            "train_backward_per_epoch": train_backward,
            "validation_per_epoch": validation,
            "per_epoch": train_forward + train_backward + validation,
        },
        "benchmark": bench,
        "estimate": {
            "steps_per_epoch": steps_per_epoch,
            "workers": world,
            "epoch_train_seconds": epoch_seconds,
            "epochs": cfg.training.epochs,
            "train_seconds_all_epochs": epoch_seconds * cfg.training.epochs,
            "note": "the training steps of one epoch per worker (what metrics' train/seconds measures); "
            "validation, checkpoints and Ray's start-up come on top, and early stopping may end sooner",
        },
    }


def cached_budget(cfg: AppConfig) -> dict[str, Any] | None:
    """The budget measured before for the same data, preprocessing, model and machine,
    or None: a file read, no torch, no Ray."""
    path = cache_path(cfg)
    if not path.is_file():
        return None
    return {**json.loads(path.read_text()), "key": path.stem, "cached": True, "cache_file": str(path)}


def compute_budget(cfg: AppConfig, reader: SplitReader | None = None, use_cache: bool = True) -> dict[str, Any]:
    """The compute budget of `cfg` (see the module's docstring), from the cache when
    the same data, preprocessing and model were sized on this machine before: then
    it costs a file read. `reader`: the run's splits, when they are written for this
    config (else they are planned from the source)."""
    from ray_app.runs import write_json

    cached = cached_budget(cfg) if use_cache else None
    if cached is not None:
        return cached
    path = cache_path(cfg)
    budget = estimate_budget(cfg, reader)
    write_json(path, budget)
    return {**budget, "key": path.stem, "cached": False, "cache_file": str(path)}


# --- showing it ------------------------------------------------------------------------------


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


def _step_line(bench: dict[str, Any]) -> str:
    median = f"{bench['step_seconds_median'] * 1000:.1f} ms/step"
    if not bench["steps"]:
        return f"{median}, {bench.get('method', 'estimated')}"
    where = f"{bench['threads']} CPU thread(s)" if bench["device"] == "cpu" else "a GPU"
    how = bench.get("method", "measured")
    return f"{median} ({how}: {bench['steps']} steps of batch {bench['batch_size']} on {where})"


def budget_lines(budget: dict[str, Any]) -> list[str]:
    """The budget as a readable table."""
    rows = budget["data"]["rows"]
    inputs, params, flops = budget["inputs"], budget["parameters"], budget["flops"]
    bench, estimate = budget["benchmark"], budget["estimate"]
    lines = [
        f"compute budget ({'cached' if budget.get('cached') else 'computed'} {budget['computed']}, key {budget['key']})",
        f"  {'rows':<26} " + ", ".join(f"{s} {rows[s]:,}" for s in SPLIT_NAMES) + f" ({budget['data']['classes']} classes)",
    ]
    if inputs["kind"] == "text":
        tokens = inputs["tokens_per_epoch"]
        lines.append(f"  {'tokens per epoch (train)':<26} {tokens['real']:,} real + {tokens['padding']:,} padding "
                     f"= {tokens['total']:,} (max_length {inputs['max_length']}, {tokens['truncated_rows']:,} rows truncated)")
    elif "patches_per_epoch" in inputs:
        lines.append(f"  {'patches per epoch (train)':<26} {inputs['patches_per_epoch']:,} "
                     f"({inputs['patches_per_sample']} per image of {inputs['image_size']}x{inputs['image_size']}, "
                     f"patch {inputs['patch_size']})")
    lines += [
        f"  {'parameters':<26} {params['total']:,} total, {params['trainable']:,} trainable "
        f"({params['trainable_share']:.1%}, {params['mode']})",
        f"  {'FLOPs per sample':<26} forward {_si(flops['forward_per_sample'])}FLOP, backward "
        f"{_si(flops['backward_per_sample'])}FLOP",
        f"  {'FLOPs per epoch':<26} train forward {_si(flops['train_forward_per_epoch'])}FLOP + backward "
        f"{_si(flops['train_backward_per_epoch'])}FLOP + val_select {_si(flops['validation_per_epoch'])}FLOP "
        f"= {_si(flops['per_epoch'])}FLOP",
        f"  {'step time':<26} {_step_line(bench)}",
        f"  {'estimated epoch':<26} {estimate['epoch_train_seconds']:.2f} s ({estimate['steps_per_epoch']} steps "
        f"per worker x {estimate['workers']} worker(s)); {estimate['epochs']} epochs "
        f"~ {estimate['train_seconds_all_epochs']:.1f} s of training steps",
    ]
    return lines
