"""`ray-app serve BUNDLE`: settings from flags / a YAML file / overrides, a local Ray
(or RAY_ADDRESS), Ray Serve bound to loopback by default, and a clean stop on Ctrl-C or
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from ray_app.config import apply_overrides, read_yaml_mapping, validate_model
from ray_app.errors import UserError
from serve.bundle import BundleError, verify_bundle
from serve.app import serve_deploy_config
from serve.config import TOKEN_ENV, ServeConfig


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
        if len(states) == len(configs) and all(st.status == "RUNNING" for st in states.values()):
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
    context = ray.init(address=address or "local")
    serve.start(http_options={"host": config.host, "port": config.port})
    deploy([config], f"http://{context.dashboard_url}")
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"


def serve_until_stopped(config: ServeConfig, echo: Callable[[str], None] = print) -> None:
    """On a local Ray: serve until Ctrl-C or SIGTERM, then shut Serve and Ray down.
    Joined to a cluster (RAY_ADDRESS): deploy and return; the app keeps running there."""
    from ray import serve

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    joined = bool(os.environ.get("RAY_ADDRESS"))
    try:
        url = start_serving(config)
        echo(f"serving at {url}/predict  (GET {url}/healthz, {url}/metadata, {url}/docs)")
        if config.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
            echo(f"warning: listening on {config.host} without a token; anyone who can reach it can use it")
        if joined:
            echo("deployed on the cluster at RAY_ADDRESS; `serve shutdown` there stops it")
            return
        echo("Ctrl-C stops")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        # A second Ctrl-C during the few seconds of shutdown must not abort it halfway.
        previous_interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if ray.is_initialized():
                if not joined:
                    echo("stopping")
                    serve.shutdown()
                ray.shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_interrupt)
