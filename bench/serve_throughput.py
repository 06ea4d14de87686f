"""Serving throughput: one bundle behind ray-app's Ray Serve app and behind a naive
per-request server.

What it measures
----------------
The same bundle (by default the digits model of `configs/digits.yaml`, exported with
its real architecture; weights do not change the cost) served two ways on loopback:

* naive: FastAPI on one uvicorn process, one forward pass per request, the request
  parsing, preprocessing and answers of `serve.predictor.BundlePredictor` (so the two
  servers differ only in how requests reach the model);
* serve: `ray-app serve` as users run it (`ray_app.serving.start_serving`, Ray Serve,
  `@serve.batch` across callers), one replica.

* serve_echo: a Ray Serve FastAPI deployment that reads the body and answers `{}`
  without a model: the ceiling Ray Serve itself reaches on this machine, to tell the
  platform's per-request cost from ray-app's.

For each, `--clients` concurrent clients (aiohttp, one process) send `--requests`
POST /predict requests of one base64 PNG each, after a warm-up. Reported per server:
throughput (requests/s), p50 / p99 latency, error count (any non-200 or exception),
and the ratio serve / naive of throughputs (target >= 2, 0 errors).

How to run
----------
    python bench/serve_throughput.py [--requests 3000] [--clients 32] [--bundle runs/<name>/bundle]

Only the JSON result is printed on stdout (logs go to stderr); it is also written to
bench/results/serve_throughput.json. The clients share the machine with the servers,
so on a 2-core machine the numbers include client overhead on both sides.
"""

# No `from __future__ import annotations`: the naive server's FastAPI route is defined
# inside a function, and FastAPI must see its real `Request` annotation.
import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serve_throughput.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_default_bundle(directory: Path) -> Path:
    """The digits preset's model, exported as a bundle with the bundle code itself."""
    import torch

    from calibration.policy import Policy
    from ray_app.config import load_config
    from ray_app.pipeline import resolve_input_spec
    from serve.bundle import export_bundle
    from trainers.model import build_classifier, save_classifier

    cfg = load_config(REPO / "configs" / "digits.yaml")
    torch.manual_seed(0)
    model = build_classifier(cfg.model, 10).eval()
    spec = resolve_input_spec(cfg)
    save_classifier(model, cfg.model, [str(i) for i in range(10)], directory / "model",
                    extra={"preprocessing": spec.to_dict()})
    policy = Policy(temperature=1.0, rule="threshold", threshold=0.5)
    return export_bundle(directory / "model", policy, directory / "bundle", {"run": "bench"})


def digit_payloads() -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    images = np.rint(load_digits().images[:64] * (255.0 / 16.0)).astype(np.uint8)
    payloads = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        body = {"inputs": [{"image": base64.b64encode(buffer.getvalue()).decode()}]}
        payloads.append(json.dumps(body).encode())
    return payloads


# --- the naive server (run in its own process) ------------------------------------------


def naive_app(bundle_dir: str) -> Any:
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError

    from serve.bundle import load_bundle
    from serve.predictor import BundlePredictor, InputError, PredictRequest

    torch.set_num_threads(1)
    predictor = BundlePredictor(load_bundle(Path(bundle_dir)), max_image_pixels=4096 * 4096)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            parsed = PredictRequest.model_validate(json.loads(await request.body()))
            inputs = predictor.prepare(parsed, 256)
        except (ValueError, ValidationError, InputError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        logits = predictor.logits(inputs)  # one forward per request, in the request
        answers = predictor.answer(logits, predictor.bundle.policy, 3)
        return {"model_version": predictor.bundle.model_version, "predictions": [a.model_dump() for a in answers]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_naive_server(bundle_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(naive_app(bundle_dir), host="127.0.0.1", port=port, log_level="warning")


def echo_app() -> Any:
    """Ray Serve with nothing behind it: the platform's own per-request ceiling."""
    from fastapi import FastAPI, Request
    from ray import serve

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=64)
    @serve.ingress(app)
    class Echo:
        @app.post("/predict")
        async def predict(self, request: Request) -> dict[str, str]:
            await request.body()
            return {}

        @app.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

    return Echo.bind()


# --- load generation --------------------------------------------------------------------


async def load(url: str, payloads: list[bytes], total: int, clients: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            started = time.perf_counter()
            try:
                async with session.post(url, data=payloads[i % len(payloads)],
                                        headers={"content-type": "application/json"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors.append(f"HTTP {response.status}")
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": total,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2) if latencies else None,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


def wait_until_up(url: str, timeout_s: float = 120.0) -> None:
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


def measure(url: str, payloads: list[bytes], total: int, clients: int, warmup: int) -> dict[str, Any]:
    asyncio.run(load(url, payloads, warmup, clients))
    return asyncio.run(load(url, payloads, total, clients))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per server")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--bundle", help="bundle to serve (default: the digits architecture, exported here)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--naive-server", nargs=2, metavar=("BUNDLE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        run_naive_server(args.naive_server[0], int(args.naive_server[1]))
        return

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else build_default_bundle(Path(tmp))
        payloads = digit_payloads()

        port = free_port()
        log(f"naive server on 127.0.0.1:{port}")
        naive = subprocess.Popen([sys.executable, __file__, "--naive-server", str(bundle), str(port)],
                                 stdout=sys.stderr, stderr=sys.stderr)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/healthz")
            naive_result = measure(f"http://127.0.0.1:{port}/predict", payloads, args.requests, args.clients, args.warmup)
        finally:
            naive.terminate()
            naive.wait(30)
        log(f"naive: {naive_result}")

        import ray
        from ray import serve

        from ray_app.serving import start_serving
        from serve.config import ServeConfig

        config = ServeConfig(bundle=str(bundle), port=free_port(), max_batch_size=args.max_batch_size,
                             batch_wait_timeout_s=args.batch_wait_s, torch_threads=1)
        url = start_serving(config)
        try:
            wait_until_up(f"{url}/healthz")
            serve_result = measure(f"{url}/predict", payloads, args.requests, args.clients, args.warmup)
            import requests

            serve_result["replica"] = requests.get(f"{url}/metadata", timeout=10).json()["replica"]
        finally:
            serve.shutdown()
            ray.shutdown()
        log(f"serve: {serve_result}")

        echo_port = free_port()
        ray.init(address="local")
        serve.start(http_options={"host": "127.0.0.1", "port": echo_port})
        try:
            serve.run(echo_app(), name="echo", route_prefix="/")
            echo_result = measure(f"http://127.0.0.1:{echo_port}/predict", payloads, args.requests, args.clients, args.warmup)
        finally:
            serve.shutdown()
            ray.shutdown()
        log(f"serve_echo: {echo_result}")

    ratio = serve_result["requests_per_s"] / naive_result["requests_per_s"]
    result = {
        "benchmark": "serve_throughput",
        "bundle": str(args.bundle or "configs/digits.yaml architecture (untrained weights)"),
        "clients": args.clients,
        "requests": args.requests,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_s,
        "naive": naive_result,
        "serve": serve_result,
        "serve_echo": echo_result,
        "serve_share_of_echo_ceiling": round(serve_result["requests_per_s"] / echo_result["requests_per_s"], 2),
        "throughput_ratio_serve_over_naive": round(ratio, 2),
        "target": ">= 2x naive throughput, 0 errors",
        "target_met": ratio >= 2.0 and naive_result["errors"] == 0 and serve_result["errors"] == 0,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
