"""Control plane reads: ray-app's indexed server against a naive rescan, at 10,000 runs.

What it measures
----------------
A runs root of `--runs` synthetic run directories (default 10,000), written as the
pipeline writes them: `config.yaml` (a resolved config of the vit, dinov2, dinov3_vit or
bert family, baseline or LoRA), `metadata.json` (stages with timings; succeeded, failed,
stopped, incomplete and a few running runs; two thirds launched from one of a few
templates) and `train/metrics.jsonl` of a few epochs. One of them has a
`metrics.jsonl` of `--long-rows` rows (default 100,000) shaped like the trainer's.

Two servers on loopback under uvicorn, in this process:

* ray-app: `ray_app.control_plane.app.create_app` on that runs root, without Ray
  (`ray_jobs=False`: these reads never need a job server), its sqlite run index
  refreshed in the background as `ray-app server` does;
* naive: the same two endpoints and answers without an index: GET /api/v1/runs reads
  every run's `metadata.json` and `config.yaml` (`summarize_run`, as the index does
  per changed run) on every request and filters and sorts in Python; GET
  .../metrics reads the whole `metrics.jsonl` and keeps the last rows.

A client in another process (`http.client`, one keep-alive connection, one request at
a time) sends, after a warm-up, `--requests` requests per endpoint to ray-app and
`--naive-requests` to naive (each of those rescans 10,000 runs):

* list: GET /api/v1/runs?status=succeeded&family=vit&limit=50
* metrics: GET /api/v1/runs/<long run>/metrics?limit=20&order=desc

and reports p50 / p99 latency (nearest rank) per server. Both servers' answers are
compared before timing: a naive server that answered differently would not be a
baseline. The run index is timed directly too: its first build from the runs root
(cold), a refresh when nothing changed and a refresh after one run changed.

Targets: ray-app list p99 < 50 ms at 10,000 runs, metrics p99 < 20 ms.

How to run
----------
    python bench/control_plane.py [--runs 10000] [--long-rows 100000] [--requests 300] [--naive-requests 5]

Only the JSON result is printed on stdout (a table and logs go to stderr); it is also
written to bench/results/control_plane.json. The client and both servers share the
machine (and the servers one Python process), so timings include that contention.
"""

# No `from __future__ import annotations`: the naive server's FastAPI routes are defined
# inside a function, and FastAPI must see their real annotations, not strings.
import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/control_plane.py` from anywhere
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "control_plane.json"

from ray_app.runs import METADATA_FILE, Run  # noqa: E402

LIST_QUERY = "/api/v1/runs?status=succeeded&family=vit&limit=50"
METRICS_QUERY = "/api/v1/runs/{name}/metrics?limit=20&order=desc"
TARGETS_MS = {"list": 50.0, "metrics": 20.0}
LONG_RUN = "vit-h64-l4_sklearn-digits_baseline_long"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- synthetic runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One resolved config the synthetic runs share (each with its own seed)."""

    family: str
    mode: str
    text: str  # config.yaml as ray-app writes it, for seed 0


def _variants(runs_root: Path) -> list[Variant]:
    """Resolved configs of the four built-in families, baseline and LoRA, dumped as the
    pipeline dumps `config.yaml`."""
    import yaml

    from ray_app.config import load_config

    digits = REPO / "configs" / "digits.yaml"
    text = REPO / "configs" / "text_smoke.yaml"
    text_data = REPO / "configs" / "data" / "text_smoke"
    image = "image_size: 8, patch_size: 2, num_channels: 1"
    bases: dict[str, tuple[Path, list[str]]] = {
        "vit": (digits, [f"model.backbone.config={{model_type: vit, {image}, hidden_size: 64, "
                         "num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 128}"]),
        "dinov2": (digits, [f"model.backbone.config={{model_type: dinov2, {image}, hidden_size: 64, "
                            "num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 128}"]),
        "dinov3_vit": (digits, [f"model.backbone.config={{model_type: dinov3_vit, {image}, hidden_size: 96, "
                                "num_hidden_layers: 3, num_attention_heads: 6, intermediate_size: 192}"]),
        "bert": (text, [f"data.source.path={text_data / 'reviews.csv'}",
                        f"model.preprocessing.tokenizer={text_data / 'tokenizer'}"]),
    }
    variants = []
    for family, (config, overrides) in bases.items():
        for mode in ("baseline", "peft"):
            cfg = load_config(config, [f"storage.root={runs_root}", "seed=0", f"training.mode={mode}", *overrides])
            dumped = yaml.safe_dump(cfg.resolved_dict(), sort_keys=False)
            # Each run differs by its seed, the first line: one dump serves them all.
            assert dumped.startswith("seed: 0\n"), dumped[:40]
            variants.append(Variant(family, mode, dumped))
    return variants


TEMPLATES = ("vit-h64-l4_sklearn-digits_baseline", "vit-h64-l4_sklearn-digits_peft", "dinov2-h64-l4_digits",
             "dinov3-vit-h96-l3_digits", "bert-h32-l2_reviews_baseline", "bert-h32-l2_reviews_peft")


def _stage(rng: random.Random, status: str, started: float, seconds: float, **fields: Any) -> dict[str, Any]:
    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))

    return {"status": status, "error": None, "fingerprint": f"{rng.getrandbits(64):016x}", "started": iso(started),
            "finished": iso(started + seconds) if status != "running" else None, "seconds": round(seconds, 2),
            **fields}


def _metrics_row(epoch: int, rng: random.Random, epochs: int, best_epoch: int) -> dict[str, Any]:
    """One epoch's row, with the trainer's columns (trainers.train_loop)."""
    progress = (epoch + 1) / epochs
    loss = 2.3 * math.exp(-3 * progress) + rng.uniform(0, 0.05)
    accuracy = min(0.99, 0.3 + 0.65 * progress + rng.uniform(-0.02, 0.02))
    return {
        "attempt": 0, "best_epoch": best_epoch, "checkpoint_rank": epoch if best_epoch == epoch else -1,
        "epoch": epoch, "lr": 0.002 * 0.5 * (1 + math.cos(math.pi * progress)), "train/loss": loss,
        "train/samples": 1078, "train/samples_per_s": rng.uniform(900, 1400), "train/seconds": rng.uniform(0.7, 1.2),
        "val_select/accuracy": accuracy, "val_select/loss": loss * 1.1, "val_select/macro_f1": accuracy - 0.02,
        "world_size": 1,
    }


def _metadata(name: str, status: str, created: float, epochs: int, best: dict[str, Any], best_epoch: int,
              template: str | None, rng: random.Random) -> dict[str, Any]:
    t = created
    stages: dict[str, Any] = {
        "splits": _stage(rng, "complete", t, 0.5, counts={"train": 1078, "val_select": 269, "val_calib": 270,
                                                       "val_test": 180}),
    }
    t += 0.5
    train_status = {"succeeded": "complete", "incomplete": "complete", "failed": "failed",
                    "stopped": "interrupted", "running": "running"}[status]
    stages["train"] = _stage(rng, train_status, t, rng.uniform(20, 600), best=best, best_epoch=best_epoch,
                             epochs_run=epochs, resumed_at=[], reads={"train": ["train", "val_select"]})
    if status == "failed":
        stages["train"]["error"] = "RuntimeError: CUDA error: out of memory"
    if status == "stopped":
        stages["train"]["error"] = "KeyboardInterrupt"
    if status == "succeeded":
        t += stages["train"]["seconds"]
        stages["calibrate"] = _stage(rng, "complete", t, 12.0, policy="guardrail", temperature=rng.uniform(0.5, 2.0),
                                     ece_before=0.3, ece_after=0.1)
        accuracy = best["val_select/accuracy"] - rng.uniform(0, 0.05)
        stages["evaluate"] = _stage(rng, "complete", t + 12, 0.1, accuracy=accuracy, coverage=rng.uniform(0.5, 0.95),
                                    accepted_accuracy=min(0.999, accuracy + 0.08), ece=0.1)
        stages["insights"] = _stage(rng, "complete", t + 12.1, 8.0)
        stages["export"] = _stage(rng, "complete", t + 20.1, 0.1, model_version=f"{name}@{rng.getrandbits(48):012x}",
                                  bundle=f"runs/{name}/bundle", files=4)
    meta: dict[str, Any] = {
        "config_fingerprint": f"{rng.getrandbits(64):016x}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created)),
        "name": name,
        "stages": stages,
        "versions": {"python": "3.11.7", "ray": "2.60.0", "ray_app": "0.1.0", "torch": "2.13.0+cpu"},
    }
    if template is not None:
        meta["template"] = {"name": template, "description": "Hidden: 64 · Layers: 4 · Heads: 4 · LR: 0.002",
                            "created": "2026-10-01T00:00:00+00:00",
                            "launched": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created - 5))}
    return meta


def write_json(path: Path, data: dict[str, Any]) -> None:
    # The layout of ray_app.runs.write_json: what the index and the naive server parse.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def generate_runs(runs_root: Path, runs: int, long_rows: int, seed: int = 0, running: int = 8) -> dict[str, Any]:
    """`runs` run directories under `runs_root` (one of them, LONG_RUN, with `long_rows`
    metrics rows); what was written, by status and family."""
    variants = _variants(runs_root)
    rng = random.Random(seed)
    runs_root.mkdir(parents=True, exist_ok=True)
    start = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    statuses = ["succeeded"] * 60 + ["failed"] * 15 + ["stopped"] * 5 + ["incomplete"] * 20
    counts: dict[str, dict[str, int]] = {"status": {}, "family": {}}
    for i in range(runs):
        long = i == 0
        variant = variants[0] if long else rng.choice(variants)
        # A few runs still running, as on a live service: the index re-reads those on every pass.
        status = "succeeded" if long else ("running" if i <= running else rng.choice(statuses))
        name = LONG_RUN if long else f"{variant.family}_{variant.mode}_{i:05d}_s{i % 7}"
        run = Run.under(runs_root, name)
        run.train.root.mkdir(parents=True)
        run.config_path.write_text(f"seed: {i % 7}\n" + variant.text.removeprefix("seed: 0\n"))
        epochs = rng.randint(3, 30) if not long else long_rows
        rows = [_metrics_row(e, rng, epochs, epochs - 1) for e in range(min(epochs, 30))]
        best = max(rows, key=lambda r: r["val_select/accuracy"])
        best_metrics = {k: best[k] for k in ("val_select/accuracy", "val_select/loss", "val_select/macro_f1")}
        template = rng.choice(TEMPLATES) if rng.random() < 2 / 3 else None
        created = start + rng.uniform(0, 300 * 86400)
        write_json(run.metadata_path,
                   _metadata(name, status, created, epochs, best_metrics, best["epoch"], template, rng))
        with run.train.metrics.open("w") as out:
            if long:
                for e in range(long_rows):
                    out.write(json.dumps(_metrics_row(e, rng, long_rows, e), sort_keys=True) + "\n")
            else:
                out.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        for key, value in (("status", status), ("family", variant.family)):
            counts[key][value] = counts[key].get(value, 0) + 1
    return {"runs": runs, "long_run": LONG_RUN, "long_rows": long_rows, **counts}


# --- the naive server ------------------------------------------------------------------------


def naive_rows(runs_root: Path) -> list[dict[str, Any]]:
    """Every run's row, read from its files now: what the index saves a request from."""
    from ray_app.control_plane.index import ROW_FIELDS, combined_status, summarize_run

    rows = []
    for entry in os.scandir(runs_root):
        if entry.name.startswith(".") or not entry.is_dir() or not os.path.isfile(os.path.join(entry.path, METADATA_FILE)):
            continue
        summary = summarize_run(Path(entry.path))
        status, message = combined_status(summary["meta_status"], summary["meta_message"], None)
        row = {**summary, "status": status, "message": message, "last_job": summary["launched_as"]}
        rows.append({k: row.get(k) for k in ROW_FIELDS} | {"search": summary["search"]})
    return rows


def naive_list(runs_root: Path, status: str | None, family: str | None, template: str | None, text: str | None,
               sort: str, descending: bool | None, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    from ray_app.control_plane.index import SORT_KEYS

    rows = [
        r for r in naive_rows(runs_root)
        if (not status or r["status"] == status) and (not family or r["family"] == family)
        and (not template or r["template"] == template) and (not text or text.lower() in r["search"])
    ]
    column, larger_first = SORT_KEYS[sort]
    desc = larger_first if descending is None else descending
    # The index's order: runs without the value last either way, ties by name (sorts
    # are stable, reversed ones too).
    have = sorted((r for r in rows if r[column] is not None), key=lambda r: r["name"])
    have.sort(key=lambda r: r[column], reverse=desc)
    rows = have + sorted((r for r in rows if r[column] is None), key=lambda r: r["name"])
    for row in rows:
        row.pop("search")
    return len(rows), rows[offset:offset + limit]


def naive_metrics(path: Path, limit: int, order: str, since_epoch: int | None,
                  keys: list[str] | None) -> list[dict[str, Any]]:
    """The whole file read and parsed, then sliced."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "epoch" in row and (since_epoch is None or row["epoch"] > since_epoch):
                rows.append(row)
    rows = rows[:limit] if order == "asc" else rows[::-1][:limit]
    if keys:
        wanted = set(keys) | {"epoch"}
        rows = [{k: v for k, v in row.items() if k in wanted} for row in rows]
    return rows


def create_naive_app(runs_root: Path) -> Any:
    """GET /api/v1/runs and GET /api/v1/runs/{name}/metrics as ray-app answers them
    (same parameters, same response models), without an index or a backwards read."""
    from typing import Annotated, Literal

    from fastapi import FastAPI, HTTPException, Query

    from ray_app.control_plane.models import RunList, RunSummary, SortKey

    app = FastAPI(title="naive control plane")

    @app.get("/api/v1/runs", response_model=RunList)
    def list_runs(
        status_: Annotated[str | None, Query(alias="status")] = None,
        family: str | None = None,
        template: str | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        sort: SortKey = "created",
        order: Literal["asc", "desc"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> RunList:
        total, rows = naive_list(runs_root, status_, family, template, q, sort,
                                 None if order is None else order == "desc", limit, offset)
        return RunList(total=total, limit=limit, offset=offset, runs=[RunSummary(**r) for r in rows])

    @app.get("/api/v1/runs/{name}/metrics")
    def get_metrics(
        name: str,
        keys: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        order: Literal["asc", "desc"] = "asc",
        since_epoch: Annotated[int | None, Query(ge=-1)] = None,
    ) -> dict[str, Any]:
        if not Run.under(runs_root, name).exists():
            raise HTTPException(404, f"no run named '{name}'")
        wanted = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
        return {"run": name, "rows": naive_metrics(Run.under(runs_root, name).train.metrics, limit, order,
                                                   since_epoch, wanted)}

    return app


def create_ray_app(runs_root: Path) -> Any:
    """ray-app's control plane on `runs_root`, without Ray (reads need no job server)."""
    from ray_app.control_plane.app import create_app
    from ray_app.control_plane.settings import ServerSettings

    return create_app(ServerSettings(runs_root=runs_root, ray_jobs=False, token=None))


# --- serving and measuring -----------------------------------------------------------------------


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port, in a thread (lifespan included); its
    base URL."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def get_json(base_url: str, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(base_url + path, timeout=600) as response:
        return json.loads(response.read())


def time_requests(base_url: str, path: str, requests: int, warmup: int) -> list[float]:
    """Seconds of each of `requests` GETs on one keep-alive connection, after `warmup`
    untimed ones. Runs in the client process."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(base_url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
    times = []
    for i in range(warmup + requests):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        if i >= warmup:
            times.append(elapsed)
    connection.close()
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary_ms(times: list[float]) -> dict[str, Any]:
    return {"n": len(times), "p50_ms": round(percentile(times, 50) * 1e3, 2),
            "p99_ms": round(percentile(times, 99) * 1e3, 2), "mean_ms": round(statistics.fmean(times) * 1e3, 2),
            "max_ms": round(max(times) * 1e3, 2)}


def time_index(runs_root: Path, changes: int = 5, repeats: int = 5) -> dict[str, Any]:
    """The run index's first build from `runs_root`, then refreshes: with nothing changed,
    and after one run's metadata.json changed. Leaves the built index where the server
    finds it."""
    from ray_app.control_plane.index import RunIndex
    from ray_app.control_plane.settings import ServerSettings

    path = ServerSettings(runs_root=runs_root).index_path
    path.unlink(missing_ok=True)
    index = RunIndex(runs_root, path)
    started = time.perf_counter()
    built = index.refresh()
    cold = time.perf_counter() - started
    unchanged, one_changed = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        index.refresh()
        unchanged.append(time.perf_counter() - started)
    names = sorted(p.name for p in runs_root.iterdir() if p.name != LONG_RUN and not p.name.startswith("."))
    for name in random.Random(1).sample(names, changes):
        meta_path = Run.under(runs_root, name).metadata_path
        meta = json.loads(meta_path.read_text())
        meta["stages"]["train"]["best"]["val_select/accuracy"] = 0.5
        write_json(meta_path, meta)
        started = time.perf_counter()
        read = index.refresh()
        one_changed.append(time.perf_counter() - started)
        assert read >= 1, "the changed run was not read again"
    running = index.list(status="running").total
    index.close()
    return {
        "runs_indexed": built, "running_runs_reread_each_refresh": running,
        "build_cold_s": round(cold, 2),
        "refresh_unchanged_ms": round(statistics.median(unchanged) * 1e3, 1),
        "refresh_one_changed_ms": round(statistics.median(one_changed) * 1e3, 1),
    }


def measure(base_url: str, path: str, requests: int, warmup: int) -> dict[str, Any]:
    # The client is another process: in this one it would share the servers' GIL.
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        times = pool.apply(time_requests, (base_url, path, requests, warmup))
    return summary_ms(times)


def machine() -> dict[str, Any]:
    import fastapi
    import uvicorn

    memory = None
    try:
        with open("/proc/meminfo") as handle:
            memory = round(int(handle.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "memory_gib": memory, "python": platform.python_version(),
            "platform": platform.platform(), "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="synthetic run directories (default 10000)")
    parser.add_argument("--long-rows", type=int, default=100_000, help="rows of the long metrics.jsonl (default 100000)")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per endpoint to ray-app (default 300)")
    parser.add_argument("--naive-requests", type=int, default=5,
                        help="timed requests per endpoint to the naive server (default 5: each rescans every run)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first (ray-app; naive: 1)")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them (default: a temporary directory)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON result (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="cp-bench-"))
    runs_root = workdir / "runs"
    try:
        if runs_root.exists():
            shutil.rmtree(runs_root)
        log(f"writing {args.runs} runs under {runs_root} ...")
        started = time.perf_counter()
        data = generate_runs(runs_root, args.runs, args.long_rows)
        data["generate_s"] = round(time.perf_counter() - started, 1)
        log(f"  {data['generate_s']} s; timing the run index ...")
        index = time_index(runs_root)
        log(f"  {index}")
        endpoints: dict[str, dict[str, Any]] = {}
        queries = {"list": LIST_QUERY, "metrics": METRICS_QUERY.format(name=LONG_RUN)}
        with serving(create_ray_app(runs_root)) as ray_url, serving(create_naive_app(runs_root)) as naive_url:
            for what, query in queries.items():
                ours, theirs = get_json(ray_url, query), get_json(naive_url, query)
                if ours != theirs:
                    raise SystemExit(f"the two servers answer {query} differently: the comparison would be void")
                log(f"{what}: {query} -> {len(ours.get('runs') or ours.get('rows'))} rows"
                    + (f" of {ours['total']}" if "total" in ours else "") + "; timing ...")
                endpoints[what] = {
                    "query": query,
                    "ray_app": measure(ray_url, query, args.requests, args.warmup),
                    "naive": measure(naive_url, query, args.naive_requests, min(args.warmup, 1)),
                }
                if "total" in ours:
                    endpoints[what]["matching_runs"] = ours["total"]
                log(f"  {endpoints[what]}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    for what, result in endpoints.items():
        result["speedup_p50"] = round(result["naive"]["p50_ms"] / result["ray_app"]["p50_ms"], 1)
        result["target_p99_ms"] = TARGETS_MS[what]
        result["target_met"] = result["ray_app"]["p99_ms"] < TARGETS_MS[what]
    result = {"machine": machine(), "data": data, "index": index, "endpoints": endpoints,
              "targets_met": all(r["target_met"] for r in endpoints.values())}

    log("")
    log(f"{'endpoint':<9} {'server':<8} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'target p99':>11}")
    for what, r in endpoints.items():
        for server in ("ray_app", "naive"):
            s = r[server]
            target = (f"< {r['target_p99_ms']:.0f} {'met' if r['target_met'] else 'MISSED'}"
                      if server == "ray_app" else "")
            log(f"{what:<9} {server:<8} {s['n']:>5} {s['p50_ms']:>9.2f} {s['p99_ms']:>9.2f} {target:>11}")
    log(f"index: build {index['build_cold_s']} s cold, refresh {index['refresh_unchanged_ms']} ms unchanged, "
        f"{index['refresh_one_changed_ms']} ms with one run changed")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
