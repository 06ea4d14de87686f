"""Serving throughput: ray-app's Serve app against naive servers and against the bare
model, on a model too small to matter (digits) and on two whose forward pass does
(a MiniLM-L6-sized text classifier, a ViT-S/16-sized image classifier).

What it measures
----------------
Per workload, one bundle built here with the project's own code (`build_classifier`,
`save_classifier`, `export_bundle`; random weights, which do not change the cost):

* digits: the digits ViT of `configs/digits_lora.yaml` (4 layers, hidden 64, 8x8),
  inputs the scikit-learn digits as base64 PNGs;
* text: a BERT encoder the size of MiniLM-L6 (6 layers, hidden 384, 12 heads,
  intermediate 1536, a 30,522-token WordPiece vocabulary written here), mean pooling,
  max_length 64; inputs sentences of 8-60 tokens (uniform), so padding matters;
* image: a ViT the size of ViT-S/16 (12 layers, hidden 384, 6 heads, intermediate
  1536, 16x16 patches) at 224x224 RGB, CLS pooling; inputs 224x224 JPEGs.

Served three ways on loopback, all up at once, the same requests:

* serve: `ray-app serve` as users run it (`ray_app.cli.serve.start_serving`), with its
  defaults: HAProxy ingress, replicas and threads from the CPUs, `@serve.batch`;
* naive-1: FastAPI on one uvicorn process, one forward per request on the event loop,
  torch's default threads (all cores);
* naive-N: the same app on N uvicorn worker processes (N = cores), one thread each.

Both naive servers use `serve.predictor.BundlePredictor` for parsing, preprocessing
(including the same dynamic padding) and answers, so the servers differ only in how
requests reach the model.

* limit: the bare model in a plain torch loop, forward only, on the same inputs
  preprocessed by the same code (texts tokenized and padded by the serving policy:
  sorted by length within the batch, chunks of `text_chunk_size`, each padded to its
  longest text), at batch sizes 1-32, both as one process using every core and as N
  one-thread processes running at once (their rates summed). The best of all is the
  limit. For text, the same loop with every text padded to max_length (what the
  model would cost without dynamic padding) is reported beside it.

Cells: concurrent clients (`--clients`, default 1, 8, 32, 64) x inputs per request
(`--shapes`, default 1 and 16). Within a cell the servers take turns (the order
rotates from cell to cell), so a change of machine load hits them alike. Each turn
sends `--inputs` inputs' worth of requests (at least two per client), stops issuing
new ones after `--cell-seconds`, and reports requests/s, inputs/s, p50 / p99 latency,
errors (any non-200, exception, or an answer without one prediction per input) and
the slowest GET /healthz answer seen meanwhile (polled every 0.5 s on its own
connection). Then a soak: `--soak-requests` single-input requests at 64 clients
against serve, with the same /healthz polling.

The load generator is a separate process per turn (aiohttp, one event loop, nice 0),
so its CPU does not land in the benchmark's own process; its CPU seconds are
reported. Servers and limit loops run at nice 15, the niceness Ray gives its worker
processes (the Serve replicas and HAProxy), so every server competes for the CPU
alike. The machine's busy share during each turn (from /proc/stat, every process
counted) is reported too: on a shared machine it shows other work.

How to run
----------
    python bench/serve_throughput.py                                  # everything, ~1 h on 2 cores
    python bench/serve_throughput.py --models text --clients 32,64 --shapes 1 \\
        --inputs 600 --soak-requests 0                                # a quick look
    python bench/serve_throughput.py --device cuda --precision fp16   # on a GPU machine
    python bench/serve_throughput.py --recording-ab 6 --models digits --clients 8 \
        --shapes 1 --inputs 400                                       # what recording answers costs

JSON goes to stdout and `bench/results/serve_throughput.json` (`--output`); logs and
a summary table go to stderr.

Recording A/B (`--recording-ab ROUNDS`, instead of the above): the cost of recording
every answer (`serve.decisions`). Two apps of one Serve instance serve the same bundle,
one replica each, one recording and one not; a policy that makes every answer an
assist, so every input is kept too (the most recording can cost). Per cell, the two
take turns for ROUNDS rounds (the order alternating), the same requests each; then the
apps swap roles (a redeploy) and do it again, so a difference between the two replica
processes themselves cancels out. The cost is 1 - (recording inputs/s) / (not recording
inputs/s), from the medians and per round; the recording replica's writer-thread CPU
per answer is reported beside it. The recorded rows are counted against the answers sent. JSON to stdout and
`bench/results/serve_recording.json` unless `--output` says otherwise.
"""

# No `from __future__ import annotations`: the naive server's FastAPI route is defined
# inside a function, and FastAPI must see its real `Request` annotation.
import argparse
import asyncio
import base64
import io
import json
import math
import os
import platform
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the subprocess modes run this file directly
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "serve_throughput.json"
RECORDING_RESULTS = REPO / "bench" / "results" / "serve_recording.json"
WORKLOADS = ("digits", "text", "image")
LIMIT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
LIMIT_ROUNDS = 3
# Ray starts its worker processes at this niceness (Ray's `worker_niceness` default);
# the naive servers and the limit loops take the same.
RAY_WORKER_NICENESS = 15
HEALTHZ_EVERY_S = 0.5
# Other processes using more than this many cores during a turn mark its cell contended.
CONTENDED_CORES = 0.25
CLIENT_TIMEOUT_S = 300.0


STARTED = time.monotonic()


def log(message: str) -> None:
    # seconds since the start on every line: where a long run spends its time
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (every core), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


# Who spends the machine's CPU during a turn, by the process title Ray gives its actors
# (`ray::ServeReplica:...`) or the command line: the first match names the role.
CPU_ROLES = (("--load-generator", "load_generator"), ("--naive-server", "naive_servers"),
             ("haproxy", "haproxy"), ("ServeReplica", "serve_replicas"), ("ProxyActor", "serve_proxy"),
             ("ServeController", "serve_controller"))


def cpu_by_role() -> dict[str, float]:
    """CPU-seconds so far of this process and every process under it (the servers,
    Ray's processes — the local Ray is started from here —, HAProxy, the load
    generator), by role. A process's `children_*` times hold its children that have
    exited: this process's are the load generators of finished turns, a live
    process's count in its own role."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    totals = {"bench": times.user + times.system, "load_generator": times.children_user + times.children_system}
    for process in me.children(recursive=True):
        try:
            title = " ".join(process.cmdline()) or process.name()
            times = process.cpu_times()
        except psutil.Error:
            continue
        role = next((name for marker, name in CPU_ROLES if marker in title), "ray_and_others")
        totals[role] = totals.get(role, 0.0) + times.user + times.system + times.children_user + times.children_system
    return totals


def own_cpu_s() -> float:
    """CPU-seconds of this process and every process under it (see `cpu_by_role`)."""
    return sum(cpu_by_role().values())


class OtherLoad:
    """CPU used meanwhile by processes that are not this benchmark's (another user's
    tests, say), in cores: what makes a turn's numbers untrustworthy on a shared machine."""

    def __enter__(self) -> "OtherLoad":
        self.started, self.busy, self.own = time.monotonic(), machine_busy_s(), own_cpu_s()
        return self

    def __exit__(self, *exc: Any) -> None:
        elapsed = max(1e-6, time.monotonic() - self.started)
        others = (machine_busy_s() - self.busy) - (own_cpu_s() - self.own)
        self.cores = round(max(0.0, others) / elapsed, 2)


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.2, sample_s: float = 3.0) -> float:
    """Wait (at most `max_wait_s`) until other processes use under `threshold_cores`
    over `sample_s`; returns their last measured use. Bounded, so a machine that never
    quiets down delays the benchmark, it does not stall it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with OtherLoad() as other:
            time.sleep(sample_s)
        if other.cores < threshold_cores or time.monotonic() > deadline:
            return other.cores


# --- workloads --------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    bundle: Path
    description: str
    inputs: list[dict[str, str]]  # one JSON input each ({"text": ...} / {"image": ...})
    payload_files: dict[int, Path] = field(default_factory=dict)  # inputs per request -> JSONL of bodies

    def write_payloads(self, directory: Path, shapes: list[int], seed: int = 0) -> None:
        """Request bodies for each shape: `shape` inputs drawn from the pool."""
        rng = random.Random(seed)
        for shape in shapes:
            path = directory / f"{self.name}_{shape}.jsonl"
            with path.open("w") as out:
                for _ in range(max(64, len(self.inputs) // shape)):
                    out.write(json.dumps({"inputs": rng.sample(self.inputs, shape)}) + "\n")
            self.payload_files[shape] = path


def export(model: Any, model_cfg: Any, labels: list[str], spec: Any, directory: Path, run: str) -> Path:
    from calibration.policy import Policy
    from serve.bundle import export_bundle
    from trainers.model import save_classifier

    save_classifier(model, model_cfg, labels, directory / "model", extra={"preprocessing": spec.to_dict()})
    policy = Policy(temperature=1.0, rule="threshold", threshold=0.5)
    return export_bundle(directory / "model", policy, directory / "bundle", {"run": run})


def encode_png(pixels: np.ndarray, mode: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def build_digits(directory: Path) -> Workload:
    import torch
    from sklearn.datasets import load_digits

    from ray_app.config import load_config
    from ray_app.stages.context import StageContext
    from trainers.model import build_classifier

    cfg = load_config(REPO / "configs" / "digits_lora.yaml")  # its model section: the digits ViT
    torch.manual_seed(0)
    bundle = export(build_classifier(cfg.model, 10).eval(), cfg.model, [str(i) for i in range(10)],
                    StageContext.for_config(cfg).input_spec, directory, "bench-digits")
    images = np.rint(load_digits().images[:256] * (255.0 / 16.0)).astype(np.uint8)
    return Workload("digits", bundle, "configs/digits_lora.yaml's ViT: 4 layers, hidden 64, 8x8 grayscale PNGs",
                    [{"image": encode_png(image, "L")} for image in images])


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT_VOCAB_SIZE = 30522  # MiniLM-L6's (BERT uncased) vocabulary size
TEXT_MAX_LENGTH = 64


def wordpiece_vocabulary(seed: int = 0) -> list[str]:
    """A BERT-sized WordPiece vocabulary of pronounceable made-up words (1-4
    syllables) and a few hundred `##` continuation pieces."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    target = TEXT_VOCAB_SIZE - len(SPECIAL_TOKENS) - 300
    while len(words) < target:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    ordered = sorted(words)
    return SPECIAL_TOKENS + ordered + ["##" + w for w in ordered[:300]]


def build_text(directory: Path, count: int = 512, seed: int = 1) -> Workload:
    import torch
    from transformers import BertTokenizerFast

    from trainers.config import ModelConfig
    from trainers.model import build_classifier
    from trainers.preprocess import TextSpec

    vocab = wordpiece_vocabulary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory / "tokenizer")
    backbone = {"model_type": "bert", "vocab_size": len(vocab), "hidden_size": 384, "num_hidden_layers": 6,
                "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512}
    model_cfg = ModelConfig.model_validate({
        "backbone": {"config": backbone}, "pooling": "mean",
        "preprocessing": {"tokenizer": str(directory / "tokenizer"), "max_length": TEXT_MAX_LENGTH},
    })
    torch.manual_seed(0)
    bundle = export(build_classifier(model_cfg, 3).eval(), model_cfg, ["negative", "neutral", "positive"],
                    TextSpec(str(directory / "tokenizer"), TEXT_MAX_LENGTH), directory, "bench-text")
    # Sentences of 8-60 tokens with [CLS] and [SEP]: whole vocabulary words, so one
    # word is one token, a few with a continuation piece.
    rng = random.Random(seed)
    words = [w for w in vocab if w not in SPECIAL_TOKENS and not w.startswith("##")]
    texts = []
    for _ in range(count):
        length = rng.randint(8, 60) - 2
        sentence = [rng.choice(words) for _ in range(length)]
        texts.append(" ".join(sentence))
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return Workload(
        "text", bundle,
        f"BERT, MiniLM-L6 size (6 layers, hidden 384, 12 heads, intermediate 1536, vocab {len(vocab)}), "
        f"mean pooling, max_length {TEXT_MAX_LENGTH}; texts of {min(lengths)}-{max(lengths)} tokens "
        f"(mean {statistics.mean(lengths):.1f})",
        [{"text": t} for t in texts],
    )


def build_image(directory: Path, count: int = 128, seed: int = 2) -> Workload:
    import torch
    from PIL import Image

    from trainers.config import ModelConfig
    from trainers.model import build_classifier
    from trainers.preprocess import ImageSpec

    backbone = {"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 384,
                "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536}
    model_cfg = ModelConfig.model_validate({"backbone": {"config": backbone}, "pooling": "cls"})
    torch.manual_seed(0)
    spec = ImageSpec(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    bundle = export(build_classifier(model_cfg, 10).eval(), model_cfg, [f"class_{i}" for i in range(10)],
                    spec, directory, "bench-image")
    # Photo-like 224x224 JPEGs: smooth colour fields (upsampled noise) plus grain, so
    # they compress like photographs (~10-20 KB), not like flat test patterns.
    rng = np.random.default_rng(seed)
    inputs, sizes = [], []
    for _ in range(count):
        coarse = rng.integers(0, 256, (rng.integers(4, 16), rng.integers(4, 16), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 6, smooth.shape).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        sizes.append(len(buffer.getvalue()))
        inputs.append({"image": base64.b64encode(buffer.getvalue()).decode()})
    return Workload(
        "image", bundle,
        "ViT, ViT-S/16 size (12 layers, hidden 384, 6 heads, intermediate 1536, patch 16) at 224x224 RGB, "
        f"CLS pooling; 224x224 JPEGs of {min(sizes) // 1024}-{max(sizes) // 1024} KB",
        inputs,
    )


BUILDERS = {"digits": build_digits, "text": build_text, "image": build_image}


# --- the naive server (its own process) -------------------------------------------------

NAIVE_ENV = "RAY_APP_BENCH_NAIVE"  # JSON settings for uvicorn worker processes


def naive_app(bundle_dir: str, threads: int, device: str, precision: str) -> Any:
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError

    from serve.bundle import load_bundle
    from serve.predictor import BundlePredictor, InputError, PredictRequest

    torch.set_num_threads(threads)
    predictor = BundlePredictor(load_bundle(Path(bundle_dir)), max_image_pixels=4096 * 4096, device=device,
                                dtype=precision, text_chunk_size=8 if device == "cpu" else None)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            parsed = PredictRequest.model_validate(json.loads(await request.body()))
            inputs = predictor.prepare(parsed, 256)
            logits = predictor.logits(inputs)  # one forward per request, on the event loop
        except (ValueError, ValidationError, InputError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        answers = predictor.answer(logits, predictor.bundle.policy, 3)
        return {"model_version": predictor.bundle.model_version, "predictions": [a.model_dump() for a in answers]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def naive_factory() -> Any:
    """uvicorn's app factory for worker processes, which import it by name."""
    settings = json.loads(os.environ[NAIVE_ENV])
    return naive_app(settings["bundle"], settings["threads"], settings["device"], settings["precision"])


def run_naive_server(settings: dict[str, Any]) -> None:
    import uvicorn

    os.nice(RAY_WORKER_NICENESS)
    os.environ[NAIVE_ENV] = json.dumps(settings)
    uvicorn.run("serve_throughput:naive_factory", factory=True, app_dir=str(Path(__file__).parent),
                host="127.0.0.1", port=settings["port"], workers=settings["workers"], log_level="warning")


# --- the limit: the bare model in a plain loop (its own processes) ------------------------


def limit_worker(settings: dict[str, Any]) -> None:
    """Times the forward alone at each batch size, in windows aligned on the wall clock
    (a start time read from stdin once every worker is ready) so several workers run
    each batch size at the same time."""
    import torch

    from serve.bundle import load_bundle
    from serve.predictor import BundlePredictor
    from trainers.preprocess import decode_image

    os.nice(RAY_WORKER_NICENESS)
    torch.set_num_threads(settings["threads"])
    device = settings["device"]
    predictor = BundlePredictor(load_bundle(Path(settings["bundle"])), 4096 * 4096, device=device,
                                dtype=settings["precision"], text_chunk_size=settings["text_chunk_size"])
    inputs = json.loads(Path(settings["inputs"]).read_text())
    rng = random.Random(settings["seed"])

    def batches(size: int) -> list[list[dict[str, Any]]]:
        """Prepared forward inputs for 16 batches of `size` pool inputs."""
        prepared = []
        for _ in range(16):
            chosen = rng.sample(inputs, size)
            if predictor.kind == "text":
                texts = [x["text"] for x in chosen]
                if settings["pad_to_max_length"]:
                    encoded = predictor.tokenizer(texts, padding="max_length", truncation=True,
                                                  max_length=predictor.text_spec.max_length, return_tensors="pt")
                    prepared.append([{"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}])
                else:
                    prepared.append([chunk for _, chunk in predictor.tokenize(texts)])
            else:
                pixels = np.stack([decode_image(base64.b64decode(x["image"]), predictor.image_spec) for x in chosen])
                prepared.append([{"pixel_values": torch.from_numpy(pixels)}])
        return prepared

    plan = {size: batches(size) for size in settings["batch_sizes"]}
    with torch.inference_mode():
        for size in settings["batch_sizes"]:  # warm-up: one forward of every batch
            for chunks in plan[size]:
                for chunk in chunks:
                    predictor.forward(**chunk)
    print("READY", flush=True)
    start_at = float(sys.stdin.readline())  # the same instant for every worker
    # The batch sizes take turns in `LIMIT_ROUNDS` rounds of short windows, so a change
    # of machine load during the measurement hits every batch size alike.
    sizes = settings["batch_sizes"]
    window = settings["seconds"] / LIMIT_ROUNDS
    done = dict.fromkeys(sizes, 0)
    spent = dict.fromkeys(sizes, 0.0)
    for k in range(LIMIT_ROUNDS * len(sizes)):
        size = sizes[k % len(sizes)]
        begin, end = start_at + k * window, start_at + (k + 1) * window
        while time.time() < begin:
            time.sleep(0.002)
        started, i = time.time(), 0  # later than `begin` when the last window overran
        with torch.inference_mode():
            while time.time() < end:
                for chunk in plan[size][i % 16]:
                    predictor.forward(**chunk)  # returns numpy: waits for the device
                done[size] += size
                i += 1
        spent[size] += time.time() - started
    rates = {size: done[size] / spent[size] for size in sizes}
    print(json.dumps(rates))


def measure_limit(workload: Workload, directory: Path, args: argparse.Namespace, threads: int, processes: int,
                  pad_to_max_length: bool = False, batch_sizes: tuple[int, ...] = LIMIT_BATCH_SIZES) -> dict[str, Any]:
    """`processes` limit workers of `threads` threads each, run together: inputs/s per
    batch size, summed over the workers."""
    inputs_file = directory / f"{workload.name}_limit_inputs.json"
    inputs_file.write_text(json.dumps(workload.inputs))
    settings = {"bundle": str(workload.bundle), "inputs": str(inputs_file), "threads": threads,
                "device": args.device, "precision": args.precision, "batch_sizes": list(batch_sizes),
                "seconds": args.limit_seconds, "text_chunk_size": 8 if args.device == "cpu" else None,
                "pad_to_max_length": pad_to_max_length}
    workers = [subprocess.Popen([sys.executable, __file__, "--limit-worker", json.dumps({**settings, "seed": i})],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
               for i in range(processes)]
    try:
        for worker in workers:
            if worker.stdout.readline().strip() != "READY":  # type: ignore[union-attr]
                raise RuntimeError(f"limit worker {worker.pid} failed before timing (see stderr)")
        start_at = time.time() + 0.5
        for worker in workers:
            worker.stdin.write(f"{start_at}\n")  # type: ignore[union-attr]
            worker.stdin.flush()  # type: ignore[union-attr]
        timeout = len(batch_sizes) * args.limit_seconds + 300
        results = [json.loads(w.communicate(timeout=timeout)[0].strip().splitlines()[-1]) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    per_batch = {int(size): round(sum(r[size] for r in results), 1) for size in results[0]}
    best = max(per_batch, key=per_batch.__getitem__)
    return {"processes": processes, "threads_each": threads, "inputs_per_s_by_batch_size": per_batch,
            "best_batch_size": best, "best_inputs_per_s": per_batch[best]}


def limit(workload: Workload, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    layouts = [(cores, 1)] + ([(1, cores)] if cores > 1 and args.device == "cpu" else [])
    runs = []
    for threads, processes in layouts:
        with OtherLoad() as other:
            runs.append(measure_limit(workload, directory, args, threads, processes))
        runs[-1]["other_load_cores"] = other.cores
    best = max(runs, key=lambda r: r["best_inputs_per_s"])
    result = {"inputs_per_s": best["best_inputs_per_s"], "layouts": runs,
              "best": f"{best['processes']} process(es) x {best['threads_each']} thread(s), batch {best['best_batch_size']}",
              "best_layout": {"threads": best["threads_each"], "processes": best["processes"],
                              "batch_size": best["best_batch_size"]}}
    if workload.name == "text":
        reference = measure_limit(workload, directory, args, best["threads_each"], best["processes"], pad_to_max_length=True)
        result["max_length_padding"] = reference
    log(f"limit {workload.name}: {result['inputs_per_s']} inputs/s ({result['best']})")
    return result


# --- load generation (its own process) -----------------------------------------------------


async def generate_load(url: str, payload_file: str, total: int, clients: int, max_s: float,
                        healthz_url: str | None, expect: int) -> dict[str, Any]:
    import aiohttp

    payloads = Path(payload_file).read_bytes().splitlines()
    latencies: list[float] = []
    errors: list[str] = []
    health: list[float] = []
    health_errors: list[str] = []
    counter = iter(range(total))
    stop_issuing = time.perf_counter() + max_s
    running = True

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.perf_counter() > stop_issuing:
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=payloads[i % len(payloads)],
                                        headers={"content-type": "application/json"}) as response:
                    body = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(type(exc).__name__)
                continue
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
            elif body.count(b'"decision"') != expect:
                errors.append("wrong number of predictions")
            else:
                latencies.append(time.perf_counter() - started)

    async def probe() -> None:
        # its own connection: a load balancer's health check does not queue behind clients
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while running:
                started = time.perf_counter()
                try:
                    async with session.get(healthz_url) as response:  # type: ignore[arg-type]
                        await response.read()
                        if response.status != 200:
                            health_errors.append(f"HTTP {response.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    health_errors.append(type(exc).__name__)
                health.append(time.perf_counter() - started)
                await asyncio.sleep(HEALTHZ_EVERY_S)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        prober = asyncio.create_task(probe()) if healthz_url else None
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        running = False
        if prober is not None:
            await prober
    latencies.sort()
    usage = resource.getrusage(resource.RUSAGE_SELF)

    def quantile(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {
        "requests": len(latencies) + len(errors),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "inputs_per_s": round(expect * len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": quantile(0.99),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "healthz_max_ms": round(1000 * max(health), 1) if health else None,
        "healthz_errors": len(health_errors),
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


def run_load(url: str, payload_file: Path, total: int, clients: int, max_s: float, expect: int,
             healthz_url: str | None = None) -> dict[str, Any]:
    """One turn of load from a separate process (bounded by count, time and a kill)."""
    settings = {"url": url, "payload_file": str(payload_file), "total": total, "clients": clients, "max_s": max_s,
                "healthz_url": healthz_url, "expect": expect}
    roles_before, started = cpu_by_role(), time.monotonic()
    with OtherLoad() as other:
        process = subprocess.Popen([sys.executable, __file__, "--load-generator", json.dumps(settings)],
                                   stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        try:
            out, _ = process.communicate(timeout=max_s + CLIENT_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    elapsed, roles_after = time.monotonic() - started, cpu_by_role()
    # Cores each role used during the turn (a process that started during it counts in full).
    cores_by_role = {role: round((spent - roles_before.get(role, 0.0)) / elapsed, 2)
                     for role, spent in sorted(roles_after.items())}
    return {**json.loads(out.strip().splitlines()[-1]), "other_load_cores": other.cores,
            "cores_by_role": {role: cores for role, cores in cores_by_role.items() if cores >= 0.01}}


# --- servers ----------------------------------------------------------------------------------


def wait_until_up(url: str, timeout_s: float = 300.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout_s}s")


class Servers:
    """Every server of one workload, up at once: naive-1, naive-N and serve."""

    def __init__(self, workload: Workload, args: argparse.Namespace) -> None:
        self.workload, self.args = workload, args
        self.urls: dict[str, str] = {}
        self.processes: list[subprocess.Popen] = []
        self.serve_config: Any = None

    def __enter__(self) -> "Servers":
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> "Servers":
        cores = os.cpu_count() or 1
        layouts = [("naive-1", 1, cores)] + ([(f"naive-{cores}", cores, 1)] if cores > 1 else [])
        if not self.args.naive:
            layouts = []
        for name, workers, threads in layouts:
            port = free_port()
            settings = {"bundle": str(self.workload.bundle), "port": port, "workers": workers, "threads": threads,
                        "device": self.args.device, "precision": self.args.precision}
            # its own process group: stopping it stops uvicorn's worker processes too
            self.processes.append(subprocess.Popen([sys.executable, __file__, "--naive-server", json.dumps(settings)],
                                                   stdout=sys.stderr, stderr=sys.stderr, start_new_session=True))
            self.urls[name] = f"http://127.0.0.1:{port}"
        from ray_app.cli.serve import start_serving
        from ray_app.config import apply_overrides
        from serve.config import ServeConfig

        raw: dict[str, Any] = {"bundle": str(self.workload.bundle), "port": free_port()}
        if self.args.device == "cuda":
            raw.update(num_gpus_per_replica=1, precision=self.args.precision)
        problems = apply_overrides(raw, self.args.serve_set)
        if problems:
            raise SystemExit(f"--serve-set: {problems}")
        self.serve_config = ServeConfig.model_validate(raw)
        # Ray's processes copy the driver's environment when it starts them, and values
        # already set win over ray-app's own (ray_app.ray_runtime.serve_environment): this
        # is how one Serve setting is switched off to measure what it buys.
        for assignment in self.args.serve_env:
            variable, _, value = assignment.partition("=")
            os.environ[variable] = value
        self.urls["serve"] = start_serving(self.serve_config)
        for url in self.urls.values():
            wait_until_up(f"{url}/healthz")
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            for process in self.processes:
                process.send_signal(signal.SIGINT)  # uvicorn stops its workers on SIGINT
            for process in self.processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    pass
                try:  # whatever is left of its group (a worker stuck starting)
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def replica_stats(self) -> dict[str, Any]:
        import requests

        return requests.get(f"{self.urls['serve']}/metadata", timeout=30).json()["replica"]


# --- orchestration ---------------------------------------------------------------------------


def cluster_resources() -> dict[str, float]:
    import ray

    return {key: float(value) for key, value in ray.cluster_resources().items()}


DEFAULT_CELL_INPUTS = {"digits": 1024, "text": 1024, "image": 384}  # image: ~15 inputs/s on 2 cores


def cell_requests(args: argparse.Namespace, workload: str, shape: int, clients: int) -> int:
    inputs = args.inputs or DEFAULT_CELL_INPUTS[workload]
    return max(math.ceil(inputs / shape), 2 * clients)


def run_workload(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    log(f"--- {name}: building the bundle and inputs")
    workload = BUILDERS[name](directory / name)
    workload.write_payloads(directory, args.shapes)
    result: dict[str, Any] = {"model": workload.description}
    result["limit_before"] = limit(workload, directory, args) if not args.skip_limit else None
    cells = []
    with Servers(workload, args) as servers:
        names = list(servers.urls)
        result["serve_config"] = servers.serve_config.model_dump(mode="json", exclude={"token"})
        result["serve_replicas"] = servers.serve_config.resolved_num_replicas(cluster_resources())
        from ray_app.ray_runtime import SERVE_ENVIRONMENT

        result["serve_environment"] = {k: os.environ.get(k, v) for k, v in SERVE_ENVIRONMENT.items()}
        for server in names:  # warm-up: a few batched requests of every shape on every server
            for shape in args.shapes:
                run_load(f"{servers.urls[server]}/predict", workload.payload_files[shape], 16, 8, 60, shape)
        turn = 0
        best = (result["limit_before"] or {}).get("best_layout")
        names_with_limit = names + (["limit"] if best else [])
        for shape in args.shapes:
            for clients in args.clients:
                cell: dict[str, Any] = {"inputs_per_request": shape, "clients": clients,
                                        "other_load_before": wait_for_quiet(args.quiet_wait)}
                order = names_with_limit[turn % len(names_with_limit):] + names_with_limit[:turn % len(names_with_limit)]
                turn += 1
                for server in order:
                    if server == "limit":  # the bare model at its best layout, between the servers' turns
                        with OtherLoad() as other:
                            rate = measure_limit(workload, directory, args, best["threads"], best["processes"],
                                                 batch_sizes=(best["batch_size"],))["best_inputs_per_s"]
                        cell["limit"] = {"inputs_per_s": rate, "other_load_cores": other.cores}
                        continue
                    cell[server] = run_load(f"{servers.urls[server]}/predict", workload.payload_files[shape],
                                            cell_requests(args, name, shape, clients), clients, args.cell_seconds, shape,
                                            healthz_url=f"{servers.urls[server]}/healthz")
                cell["contended"] = any(cell[k]["other_load_cores"] > CONTENDED_CORES
                                        for k in names_with_limit if k in cell)
                add_ratios(cell, (result["limit_before"] or {}).get("inputs_per_s"))
                log(summary_line(name, cell))
                cells.append(cell)
        result["cells"] = cells
        if name == args.soak_model and args.soak_requests:
            log(f"soak: {args.soak_requests} requests at 64 clients against serve")
            result["soak"] = run_load(f"{servers.urls['serve']}/predict", workload.payload_files[1],
                                      args.soak_requests, 64, args.soak_requests, 1,
                                      healthz_url=f"{servers.urls['serve']}/healthz")
            result["soak"]["clients"] = 64
            log(f"soak: {result['soak']}")
        result["serve_replica_stats"] = servers.replica_stats()
    result["limit_after"] = limit(workload, directory, args) if not args.skip_limit and args.limit_after else None
    if result["limit_before"] and result["limit_after"]:
        before, after = result["limit_before"]["inputs_per_s"], result["limit_after"]["inputs_per_s"]
        result["limit_drift"] = round(after / before - 1, 3)
    return result


def recording_ab(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Recording on against off, interleaved turns on one Serve instance, in two passes
    that swap which of the two apps (and replica processes) records, so a difference
    between the replicas themselves cancels out (see the module docstring)."""
    import ray
    import requests
    from ray import serve

    from ray_app.cli.serve import deploy
    from ray_app.ray_runtime import serve_environment
    from serve.config import ServeConfig
    from serve.decision_store import DecisionStore

    log(f"--- recording A/B on {name}: building the bundle and inputs")
    workload = BUILDERS[name](directory / name)
    workload.write_payloads(directory, args.shapes)
    store = DecisionStore(directory / "decisions")
    port = free_port()
    # A band covering every confidence: each answer is an assist and keeps its input.
    everything_assist = {"temperature": 1.0, "rule": "guardrail", "center": 0.5, "width": 1.0}
    common: dict[str, Any] = {"bundle": str(workload.bundle), "port": port, "num_replicas": 1,
                              "policy": everything_assist}
    if args.device == "cuda":
        common.update(num_gpus_per_replica=0.5, precision=args.precision)

    def configs(recording_app: str) -> list[ServeConfig]:
        return [ServeConfig(app_name=app, route_prefix=f"/{app}", **common,
                            decisions={"directory": str(store.directory)} if app == recording_app else {"enabled": False})
                for app in ("a", "b")]

    with serve_environment():
        context = ray.init(address="local")
    result: dict[str, Any] = {"model": workload.description, "rounds_per_pass": args.recording_ab,
                              "policy": "every answer an assist (every input kept)",
                              "decisions_settings": configs("a")[0].decisions.model_dump(mode="json"), "passes": []}
    turns: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for recording_app in ("a", "b"):
            deploy(configs(recording_app), f"http://{context.dashboard_url}")
            urls = {"on": f"http://127.0.0.1:{port}/{recording_app}",
                    "off": f"http://127.0.0.1:{port}/{'b' if recording_app == 'a' else 'a'}"}
            for url in urls.values():
                wait_until_up(f"{url}/healthz")
            answered_on = 0
            for arm, url in urls.items():  # warm-up
                for shape in args.shapes:
                    warm = run_load(f"{url}/predict", workload.payload_files[shape], 16, 8, 60, shape)
                    answered_on += (warm["requests"] - warm["errors"]) * shape if arm == "on" else 0
            on_seconds = 0.0
            for shape in args.shapes:
                for clients in args.clients:
                    cell = turns.setdefault((shape, clients), {"on": [], "off": []})
                    total = cell_requests(args, name, shape, clients)
                    for round_index in range(args.recording_ab):
                        for arm in (("on", "off") if round_index % 2 == 0 else ("off", "on")):
                            turn = run_load(f"{urls[arm]}/predict", workload.payload_files[shape], total, clients,
                                            args.cell_seconds, shape)
                            cell[arm].append(turn)
                            if arm == "on":
                                answered_on += (turn["requests"] - turn["errors"]) * shape
                                on_seconds += turn["seconds"]
            stats = requests.get(f"{urls['on']}/metadata", timeout=30).json()["decisions"]
            result["passes"].append({"recording_app": recording_app, "answers_sent_to_recording_app": answered_on,
                                     "recorder_stats": stats,
                                     # the writer thread's CPU against the time the recording app was under load
                                     "writer_cpu_share_of_a_core": round(stats["writer_cpu_s"] / on_seconds, 4),
                                     "writer_cpu_us_per_answer": round(1e6 * stats["writer_cpu_s"]
                                                                       / max(1, stats["recorded"]), 1)})
        # the second pass's deploy restarted the first recording replica: its queue was
        # written on that clean shutdown; the second's is written within a flush interval
        sent = sum(p["answers_sent_to_recording_app"] for p in result["passes"])
        flush_s = configs("a")[0].decisions.flush_interval_s
        deadline = time.monotonic() + 10 * flush_s + 10
        while recorded_rows(store) < sent and time.monotonic() < deadline:
            time.sleep(flush_s)
        result["answers_sent_to_recording_apps"] = sent
        result["rows_recorded"] = recorded_rows(store)
        result["rows_with_input"] = len(store.read(decisions=("assist", "abstain"), with_inputs=False))
        result["store_bytes"] = sum(p.stat().st_size for p in store.directory.iterdir())
    finally:
        serve.shutdown()
        ray.shutdown()
    result["cells"] = []
    for (shape, clients), cell in turns.items():
        rates = {arm: [t["inputs_per_s"] for t in cell[arm]] for arm in cell}
        median = {arm: statistics.median(rates[arm]) for arm in rates}
        paired = [1 - on / off for on, off in zip(rates["on"], rates["off"], strict=True) if off]
        half = args.recording_ab
        summary = {"inputs_per_request": shape, "clients": clients, "requests_per_turn": cell_requests(args, name, shape, clients),
                   "inputs_per_s": rates, "median_inputs_per_s": median,
                   "p50_ms": {arm: statistics.median(t["p50_ms"] for t in cell[arm]) for arm in cell},
                   "p99_ms": {arm: statistics.median(t["p99_ms"] for t in cell[arm]) for arm in cell},
                   "errors": {arm: sum(t["errors"] for t in cell[arm]) for arm in cell},
                   "cost": round(1 - median["on"] / median["off"], 4),
                   "cost_per_round": [round(c, 4) for c in paired],
                   "cost_per_round_median": round(statistics.median(paired), 4),
                   "cost_per_round_median_by_pass": [round(statistics.median(paired[:half]), 4),
                                                     round(statistics.median(paired[half:]), 4)]}
        log(f"recording {name} x{shape} c{clients}: on {median['on']:.0f} / off {median['off']:.0f} inputs/s, cost "
            f"{summary['cost']:+.1%}; per round median {summary['cost_per_round_median']:+.1%} (by pass "
            f"{summary['cost_per_round_median_by_pass']})")
        result["cells"].append(summary)
    return result


def recorded_rows(store: Any) -> int:
    return sum(sum(per_decision.values()) for per_decision in store.counts().values())


def add_ratios(cell: dict[str, Any], limit_sweep_rate: float | None) -> None:
    """serve over each naive server and over the limit measured in the cell; also over
    the sweep's limit before the servers started, which runs without idle servers beside
    it and is the higher, stricter limit the target is judged against."""
    serve_rate = cell["serve"]["inputs_per_s"]
    for server in [k for k in cell if k.startswith("naive-") or k == "limit"]:
        rate = cell[server]["inputs_per_s"]
        cell[f"serve_over_{server}"] = round(serve_rate / rate, 2) if rate else None
    if limit_sweep_rate:
        cell["serve_over_limit_sweep"] = round(serve_rate / limit_sweep_rate, 2)


def summary_line(name: str, cell: dict[str, Any]) -> str:
    parts = [f"{name} x{cell['inputs_per_request']} c{cell['clients']}{' (contended)' if cell['contended'] else ''}:"]
    for server in [k for k in cell if k == "serve" or k.startswith("naive-")]:
        r = cell[server]
        parts.append(f"{server} {r['inputs_per_s']}/s p50 {r['p50_ms']} p99 {r['p99_ms']} err {r['errors']} "
                     f"others {r['other_load_cores']}")
    if "limit" in cell:
        parts.append(f"limit {cell['limit']['inputs_per_s']}/s others {cell['limit']['other_load_cores']}")
    parts += [f"{k}={v}" for k, v in cell.items() if k.startswith("serve_over")]
    parts.append("serve's cores: " + ", ".join(f"{k} {v}" for k, v in cell["serve"].get("cores_by_role", {}).items()))
    return " | ".join(parts)


def strictest_limit_ratio(cell: dict[str, Any]) -> float:
    """serve over the higher of the two limits (in the cell, and the sweep before)."""
    ratios = [cell[k] for k in ("serve_over_limit", "serve_over_limit_sweep") if cell.get(k)]
    return min(ratios) if ratios else 0.0


def evaluate_targets(workloads: dict[str, Any]) -> dict[str, Any]:
    """The text targets: at 32 and 64 clients, single-input requests, serve >= 1.5x
    naive-1 and >= 0.8x the limit, p99 below naive-1's, 0 errors; the soak: 0 errors
    and /healthz always within 1 s."""
    text = workloads.get("text")
    if not text:
        return {}
    checks = []
    for cell in text["cells"]:
        if cell["inputs_per_request"] != 1 or cell["clients"] not in (32, 64):
            continue
        if "naive-1" not in cell:
            continue
        serve, naive = cell["serve"], cell["naive-1"]
        checks.append({
            "clients": cell["clients"],
            "serve_over_naive_1": cell["serve_over_naive-1"], "target_naive": 1.5,
            "serve_over_limit": cell.get("serve_over_limit"),
            "serve_over_limit_sweep": cell.get("serve_over_limit_sweep"), "target_limit": 0.8,
            "p99_ms": serve["p99_ms"], "naive_1_p99_ms": naive["p99_ms"], "errors": serve["errors"],
            "contended": cell["contended"],
            "met": bool(cell["serve_over_naive-1"] >= 1.5 and strictest_limit_ratio(cell) >= 0.8
                        and serve["p99_ms"] < naive["p99_ms"] and serve["errors"] == 0),
        })
    result: dict[str, Any] = {"text_32_64_clients": checks}
    soak = text.get("soak")
    if soak:
        result["soak"] = {"requests": soak["requests"], "errors": soak["errors"], "healthz_max_ms": soak["healthz_max_ms"],
                          "met": soak["errors"] == 0 and soak["healthz_errors"] == 0 and soak["healthz_max_ms"] < 1000}
    return result


def print_table(result: dict[str, Any]) -> None:
    for name, workload in result["workloads"].items():
        limit_rate = (workload.get("limit_before") or {}).get("inputs_per_s")
        log(f"\n{name}: {workload['model']}; limit sweep {limit_rate} inputs/s")
        servers = [k for k in workload["cells"][0] if k == "serve" or k.startswith("naive-")]
        log("| inputs/req | clients | " + " | ".join(f"{s} inputs/s (p50 / p99 ms, err)" for s in servers)
            + " | limit inputs/s | serve / naive-1 | serve / limit (in cell, sweep) | contended |")
        for cell in workload["cells"]:
            row = [str(cell["inputs_per_request"]), str(cell["clients"])]
            row += [f"{cell[s]['inputs_per_s']} ({cell[s]['p50_ms']:.0f} / {cell[s]['p99_ms']:.0f}, {cell[s]['errors']})"
                    for s in servers]
            row += [str(cell.get("limit", {}).get("inputs_per_s")), str(cell.get("serve_over_naive-1")),
                    f"{cell.get('serve_over_limit')}, {cell.get('serve_over_limit_sweep')}",
                    "yes" if cell["contended"] else ""]
            log("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,text,image", help="workloads, comma-separated: digits, text, image")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent clients per cell, comma-separated")
    parser.add_argument("--shapes", default="1,16", help="inputs per request per cell, comma-separated")
    parser.add_argument("--inputs", type=int, default=None,
                        help="inputs' worth of requests per server per cell (default: 1024; 384 for image)")
    parser.add_argument("--cell-seconds", type=float, default=45.0, help="stop issuing requests after this long")
    parser.add_argument("--limit-seconds", type=float, default=6.0,
                        help="timing per batch size of the limit (in 3 rounds of windows)")
    parser.add_argument("--skip-limit", action="store_true", help="no bare-model limit (no serve / limit ratios)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each cell, wait up to this long for other processes to go quiet")
    parser.add_argument("--soak-requests", type=int, default=10_000, help="soak requests at 64 clients (0: none)")
    parser.add_argument("--soak-model", default="text", help="workload the soak runs on")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--serve-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a ServeConfig setting for the serve app (repeatable), e.g. num_replicas=1")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the Ray that serves (repeatable), over ray-app's own, "
                        "e.g. RAY_SERVE_ENABLE_HA_PROXY=0")
    parser.add_argument("--no-naive", dest="naive", action="store_false",
                        help="serve alone, no naive servers (to compare Serve settings between runs)")
    parser.add_argument("--no-limit-after", dest="limit_after", action="store_false",
                        help="measure the limit sweep only before the servers, not again after")
    parser.add_argument("--recording-ab", type=int, default=0, metavar="ROUNDS",
                        help="only measure what recording answers costs: ROUNDS interleaved turns per cell of an app "
                        "recording and one not, on the first of --models (default output serve_recording.json)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where the JSON goes (default bench/results/serve_throughput.json, or "
                        "serve_recording.json with --recording-ab)")
    parser.add_argument("--naive-server", help=argparse.SUPPRESS)
    parser.add_argument("--limit-worker", help=argparse.SUPPRESS)
    parser.add_argument("--load-generator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        run_naive_server(json.loads(args.naive_server))
        return
    if args.limit_worker:
        limit_worker(json.loads(args.limit_worker))
        return
    if args.load_generator:
        settings = json.loads(args.load_generator)
        print(json.dumps(asyncio.run(generate_load(**settings))))
        return

    args.models = [m for m in args.models.split(",") if m]
    args.clients = [int(c) for c in args.clients.split(",")]
    args.shapes = [int(s) for s in args.shapes.split(",")]
    unknown = set(args.models) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(WORKLOADS)}")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # A SIGTERM (a `timeout`, a CI cancel) unwinds like Ctrl-C, so the servers, Ray and
    # the limit workers this started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.recording_ab:
        output = args.output or RECORDING_RESULTS
        started = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            ab = recording_ab(args.models[0], Path(tmp), args)
        import ray

        ab = {"benchmark": "serve_recording", "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "duration_s": round(time.time() - started), "machine": {"cpus": os.cpu_count(), "ray": ray.__version__,
                                                                      "platform": platform.platform()},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k not in ("naive_server", "limit_worker", "load_generator")},
              **ab}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(ab, indent=2) + "\n")
        print(json.dumps(ab, indent=2))
        return
    args.output = args.output or RESULTS
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workloads = {name: run_workload(name, Path(tmp), args) for name in args.models}
    import ray
    import torch
    import transformers

    result = {
        "benchmark": "serve_throughput",
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "duration_s": round(time.time() - started),
        "settings": {k: v for k, v in vars(args).items() if k not in ("naive_server", "limit_worker", "load_generator", "output")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "load_generation": "one aiohttp process per turn at nice 0, loopback; servers and limit loops at nice 15",
        "workloads": workloads,
        "targets": evaluate_targets(workloads),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
