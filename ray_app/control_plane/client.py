"""A small client of the control plane's API, for the CLI (`ray-app submit`,
`templates`, `families`): standard library only, errors as the server words them."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from ray_app.control_plane.settings import DEFAULT_PORT, SERVER_TOKEN_ENV, SERVER_URL_ENV
from ray_app.errors import UserError

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class ServerClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 300.0) -> None:
        self.url = (url or os.environ.get(SERVER_URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get(SERVER_TOKEN_ENV)
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise UserError(self._reason(exc)) from None
        except OSError as exc:
            raise UserError(
                f"no control plane answers at {self.url} ({getattr(exc, 'reason', exc)}); start one with "
                f"`ray-app server`, or point --server / ${SERVER_URL_ENV} at it"
            ) from None
        return json.loads(raw) if raw else None

    @staticmethod
    def _reason(exc: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(exc.read())
        except ValueError:
            return f"the server answered {exc.code} {exc.reason}"
        detail = payload.get("detail")
        if isinstance(detail, list):
            detail = "\n" + "\n".join(f"  - {d}" for d in detail)
        hint = f" (set ${SERVER_TOKEN_ENV})" if exc.code == 401 else ""
        return f"{payload.get('error', exc.reason)} ({exc.code}): {detail}{hint}"
