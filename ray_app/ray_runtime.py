"""Starting or joining Ray, and the ports and environment variables that go with it.

Every command that needs Ray comes here: `init_ray` joins the configured cluster (or
`RAY_ADDRESS`, as under `ray job submit`) or starts a local Ray in-process;
`serve_environment` holds the settings Ray Serve reads from the environment of the Ray
processes while a local Ray starts; `free_port` and `check_port_free` are the one way
ray-app picks and checks loopback ports.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_app.config import AppConfig

# Read by Ray's state API: where the dashboard's API server of this Ray listens.
API_SERVER_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
# Ray clusters enforce token auth, and Ray's clients send the token only in this mode,
# read when Ray is first imported.
AUTH_MODE_ENV = "RAY_AUTH_MODE"

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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Serve's proxy retries a taken port forever; say so up front instead."""
    from ray_app.errors import UserError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None


def init_ray(cfg: AppConfig) -> None:
    """Connect to the configured cluster (or RAY_ADDRESS, as under `ray job submit`),
    else start a local Ray in-process with room for the workers plus Ray Data."""
    import ray
    import ray.data

    if not sys.stdout.isatty():
        # Ray Data's progress bars become thousands of log lines without a terminal;
        # the stages print their own progress instead. Set before ray.init so the
        # local workers inherit it.
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    needed = math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker) + 1
    start_local_ray(cfg.ray.num_cpus or max(os.cpu_count() or 1, needed))


def start_local_ray(num_cpus: int | None = None) -> Any:
    """A Ray of our own in this process, its dashboard on a free loopback port that
    every Ray process knows.

    address="local": start our own Ray even when `ray start` left a cluster on this
    machine (a bare ray.init() would attach to it and refuse num_cpus). The API server
    address goes into the environment before the raylet starts, so every worker
    inherits it: Ray Train's placement-group cleaner finds its cluster through the
    state API, which otherwise auto-detects the address and fails when a machine runs
    two Rays. A failed cleaner leaks the CPUs of every sweep trial ASHA stops, and the
    sweep then waits forever for them."""
    import ray

    port = free_port()
    with environment({API_SERVER_ADDRESS_ENV: f"http://127.0.0.1:{port}"}, keep_existing=False):
        return ray.init(address="local", num_cpus=num_cpus, dashboard_port=port)


@contextmanager
def environment(values: dict[str, str], keep_existing: bool = True) -> Iterator[dict[str, str]]:
    """`values` in os.environ for the block (a value already set wins when
    `keep_existing`), the previous environment restored after.

    Ray processes started inside the block keep their copy; the driver's own
    environment is restored so that subprocesses of this one, which may start a Ray of
    their own, do not inherit this one's addresses and ports. Yields what was in force."""
    previous = {name: os.environ.get(name) for name in values}
    applied = {name: (previous[name] if keep_existing and previous[name] else value) for name, value in values.items()}
    os.environ.update(applied)
    try:
        yield applied
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def serve_environment() -> Iterator[dict[str, str]]:
    """SERVE_ENVIRONMENT (and free HAProxy side ports) in os.environ while a local Ray
    starts inside the block. Yields the values in force."""
    with environment({**SERVE_ENVIRONMENT, **{name: str(free_port()) for name in HAPROXY_PORT_VARIABLES}}) as applied:
        yield applied
