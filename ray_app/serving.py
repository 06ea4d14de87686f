"""`ray-app serve BUNDLE`: settings from flags / a YAML file / overrides, a local Ray
(or RAY_ADDRESS), Ray Serve bound to loopback by default, and a clean stop on Ctrl-C or
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from ray_app.config import apply_overrides, read_yaml_mapping, validate_model
from ray_app.errors import UserError
from serve.bundle import BundleError, verify_bundle
from serve.app import serve_deploy_config
from serve.config import TOKEN_ENV, ServeConfig


# Ray Serve reads these from the environment of the Ray processes (controller, proxy,
# replicas), so they take effect when ray-app starts the Ray that serves; a value
# already in the environment wins (e.g. RAY_SERVE_ENABLE_HA_PROXY=0 for Serve's Python
# proxy). On a cluster joined through RAY_ADDRESS, set them where the cluster starts.
# What each bought is in BENCHMARKS.md (bench/serve_throughput.py).
SERVE_ENVIRONMENT: dict[str, str] = {
    # HAProxy (C, shipped with ray[serve]) takes HTTP in place of the Python proxy actor
    # and forwards each request straight to a replica's own HTTP server: no proxy
    # process parsing every request, no Ray call per request.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Serve's documented high-throughput profile: user code on the replica's own event
    # loop (no hop between loops per request), request-path logs buffered, replica
    # logs to files only instead of also to stderr (which the driver would echo).
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Behind HAProxy a stopping replica keeps accepting for this long (default 30 s) so
    # that load balancers elsewhere notice it is going; ray-app's HAProxy is told at
    # once and retries a refused connection, so 2 s keeps Ctrl-C, app removal and
    # redeploys quick without dropping requests.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}
# HAProxy's stats page and Prometheus endpoint listen on fixed ports (8404, 9101) by
# default, so a second Serve on the same machine could not start its HAProxy; each
# ray-app Serve takes free ports instead.
HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_environment() -> Iterator[dict[str, str]]:
    """SERVE_ENVIRONMENT (and free HAProxy side ports) in os.environ while a local Ray
    starts inside the block; the Ray processes keep their copy, and the driver's own
    environment is restored after, so subprocesses that start a Ray of their own pick
    their own ports. Yields the values in force."""
    wanted = {**SERVE_ENVIRONMENT, **{name: str(_free_port()) for name in HAPROXY_PORT_VARIABLES}}
    previous = {name: os.environ.get(name) for name in wanted}
    applied = {name: previous[name] or value for name, value in wanted.items()}
    os.environ.update(applied)
    try:
        yield applied
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_serve_config(
    bundle: str, config_path: str | None, overrides: list[str], host: str | None, port: int | None
) -> ServeConfig:
    """Serve settings: the YAML file, then -o overrides, then --host/--port, validated
    at once; the bundle is verified before anything starts."""
    source = config_path or "serve settings"
    raw: dict[str, Any] = read_yaml_mapping(Path(config_path)) if config_path else {}
    problems = apply_overrides(raw, overrides)
    raw["bundle"] = bundle
    if host is not None:
        raw["host"] = host
    if port is not None:
        raw["port"] = port
    if raw.get("token") is None and os.environ.get(TOKEN_ENV):
        raw["token"] = os.environ[TOKEN_ENV]
    config = validate_model(ServeConfig, raw, source, problems)
    try:
        verify_bundle(Path(bundle))
    except BundleError as exc:
        raise UserError(str(exc)) from None
    return config


def check_port_free(host: str, port: int) -> None:
    """Serve's proxy retries a taken port forever; say so up front instead."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None


def deploy(configs: list[ServeConfig], dashboard_url: str, timeout_s: float = 180.0) -> None:
    """Deploy through Serve's REST API, exactly as `serve deploy CONFIG` does, and wait
    until every app runs. Declarative deploys are what let a later deploy with only a
    new user_config (policy, top-k, batching) reconfigure the running replicas."""
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    submitted_at = time.time()
    ServeSubmissionClient(dashboard_url).deploy_applications(serve_deploy_config(configs))
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
        # only this deploy counts: before the controller applies it, the previous one
        # still reports RUNNING
        states = {c.app_name: statuses[c.app_name] for c in configs
                  if c.app_name in statuses and statuses[c.app_name].last_deployed_time_s >= submitted_at - 1}
        failed = {name: st.message for name, st in states.items() if st.status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise UserError(f"Serve could not deploy {sorted(failed)}: {next(iter(failed.values()))}")
        # The config is the whole desired state: apps left out are deleted, and the
        # deploy is complete once they are gone too (behind HAProxy a removed app's
        # replicas keep answering while they drain).
        leftover = set(statuses) - {c.app_name for c in configs}
        if len(states) == len(configs) and all(st.status == "RUNNING" for st in states.values()) and not leftover:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve apps not running after {timeout_s:.0f}s: { {n: s.status for n, s in states.items()} }")
        time.sleep(0.5)


def start_serving(config: ServeConfig) -> str:
    """Start (or join) Ray and Serve and deploy the bundle; returns the base URL."""
    from ray import serve

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        check_port_free(config.host, config.port)
    if address:
        context = ray.init(address=address)
    else:
        with serve_environment():
            context = ray.init(address="local")
    serve.start(http_options={"host": config.host, "port": config.port})
    deploy([config], f"http://{context.dashboard_url}")
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"


# serve.shutdown() can wait forever: with the throughput profile the controller may be
# killed while its graceful_shutdown call is retried without limit. The Ray started
# here goes down with ray.shutdown() anyway, so waiting longer buys nothing.
SERVE_SHUTDOWN_TIMEOUT_S = 20.0


def _shutdown_serve(serve: Any, echo: Callable[[str], None]) -> None:
    stopper = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    stopper.start()
    stopper.join(SERVE_SHUTDOWN_TIMEOUT_S)
    if stopper.is_alive():
        echo(f"Serve did not stop within {SERVE_SHUTDOWN_TIMEOUT_S:.0f} s; stopping its Ray")


def serve_until_stopped(config: ServeConfig, echo: Callable[[str], None] = print) -> None:
    """On a local Ray: serve until Ctrl-C or SIGTERM, then shut Serve and Ray down.
    Joined to a cluster (RAY_ADDRESS): deploy and return; the app keeps running there."""
    from ray import serve

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    previous_interrupt = signal.getsignal(signal.SIGINT)
    joined = bool(os.environ.get("RAY_ADDRESS"))
    try:
        url = start_serving(config)
        echo(f"serving at {url}/predict  (GET {url}/healthz, {url}/metadata, {url}/docs)")
        if config.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
            echo(f"warning: listening on {config.host} without a token; anyone who can reach it can use it")
        if joined:
            echo("deployed on the cluster at RAY_ADDRESS; `serve shutdown` there stops it")
            return
        # Ctrl-C sets the same event as SIGTERM rather than raising KeyboardInterrupt:
        # with Ray's threads and handlers in this process, an interrupt raised in the main
        # thread was sometimes never seen, and the server kept running.
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        echo("Ctrl-C stops")
        while not stop.wait(0.5):
            pass
    finally:
        # A second Ctrl-C during the few seconds of shutdown must not abort it halfway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if ray.is_initialized():
                if not joined:
                    echo("stopping")
                    _shutdown_serve(serve, echo)
                ray.shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_interrupt)
