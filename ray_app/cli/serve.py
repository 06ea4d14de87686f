"""`ray-app serve BUNDLE`: settings from flags / a YAML file / overrides, a local Ray
(or RAY_ADDRESS), the bundle deployed declaratively on Ray Serve (`serve.app`), bound
to loopback by default, and a clean stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.cli.arguments import add_override_argument
from ray_app.errors import UserError
from ray_app.ray_runtime import check_port_free, serve_environment

if TYPE_CHECKING:  # torch and Ray load with the serve package: --help and bad flags answer at once
    from serve.config import ServeConfig


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory, e.g. runs/<name>/bundle")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--config", help="YAML of serve settings (see serve/config.py: batching, replicas, limits, policy)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the Ray Serve config file for these settings (for `serve deploy`) and exit",
    )
    add_override_argument(parser)
    parser.epilog = (parser.epilog or "") + (
        "\n\nA token (env RAY_APP_SERVE_TOKEN or -o token=...) makes every request but "
        "/healthz need 'Authorization: Bearer <token>'."
    )


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_serve_config(args.bundle, args.config, args.override, args.host, args.port)
    if args.print_config:
        import yaml

        from serve.app import serve_deploy_config

        print(f"# serve deploy FILE   (written by: ray-app serve {args.bundle} --print-config)")
        print("# Edit user_config and deploy again to change the policy in place; a token comes")
        print("# from RAY_APP_SERVE_TOKEN on the cluster or args.token.")
        print(yaml.safe_dump(serve_deploy_config([config], include_token=False), sort_keys=False), end="")
        return 0
    try:
        serve_until_stopped(config, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        # A Ctrl-C before serve_until_stopped takes Ctrl-C over (while Serve starts), or
        # one Ray hands on again after the stop: Serve and Ray are already shut down by
        # serve_until_stopped's cleanup, so the exit is clean, not an interruption.
        pass
    return 0


def load_serve_config(
    bundle: str, config_path: str | None, overrides: list[str], host: str | None, port: int | None
) -> ServeConfig:
    """Serve settings: the YAML file, then -o overrides, then --host/--port, validated
    at once; the bundle is verified before anything starts."""
    from ray_app.config import apply_overrides, read_yaml_mapping, validate_model
    from serve.bundle import BundleError, verify_bundle
    from serve.config import TOKEN_ENV, ServeConfig

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


def deploy(configs: list[ServeConfig], dashboard_url: str, timeout_s: float = 180.0) -> None:
    """Deploy through Serve's REST API, exactly as `serve deploy CONFIG` does, and wait
    until every app runs. Declarative deploys are what let a later deploy with only a
    new user_config (policy, top-k, batching) reconfigure the running replicas."""
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from serve.app import serve_deploy_config

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
    """Start (or join) Ray and Serve and deploy the bundle; returns the base URL. A Ray
    already running in this process is used as it is."""
    import ray
    from ray import serve

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        check_port_free(config.host, config.port)
    if ray.is_initialized():
        dashboard_url = ray._private.worker.get_dashboard_url()
    elif address:
        dashboard_url = ray.init(address=address).dashboard_url
    else:
        with serve_environment():
            dashboard_url = ray.init(address="local").dashboard_url
    serve.start(http_options={"host": config.host, "port": config.port})
    deploy([config], f"http://{dashboard_url}")
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
    import ray
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
