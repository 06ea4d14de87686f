"""Servers in a thread on loopback for tests, and what talks to them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.ray_runtime import free_port


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn on a free loopback port in a thread (lifespan and
    all, as `ray-app server` runs it); its base URL. Stopped on exit."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sse_events(session: Any, url: str, **kwargs: Any) -> list[dict[str, str]]:
    """Every event of a stream that ends by itself, parsed from the wire format."""
    events, current = [], {}
    with session.get(url, stream=True, timeout=30, **kwargs) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events


CONTROL_PLANE_TOKEN = "test-token"
# The monitor's drift threshold the test server is started with (not the default 0.2), so
# the tests see the setting reach the monitor.
CONTROL_PLANE_DRIFT_PSI = 0.25
PLANE_SMOKE_EPOCHS = 3


@dataclass
class ControlPlaneServer:
    url: str
    runs: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def session(self) -> Any:
        """A requests session that carries the server's token (one per thread)."""
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {CONTROL_PLANE_TOKEN}"
        return session


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
