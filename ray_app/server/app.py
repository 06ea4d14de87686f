"""The control plane's FastAPI application.

    create_app(ServerSettings(runs_root=..., ray_address=...))   # importable
    ray-app server [--host --port --ray-address --runs-root]     # the same, under uvicorn

One router per resource under /api/v1, every one behind the bearer token when one is
set; /healthz, /docs and /openapi.json stay open. Every error is JSON
`{"error", "detail"}` with a 4xx status, and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ray_app import __version__
from ray_app.errors import ConfigError, DataError, ExampleNotFound, InsightsError, InsightsNotReady, UserError
from ray_app.server.deps import require_token
from ray_app.server import dashboard
from ray_app.server.routers import configs, families, insights, runs, templates
from ray_app.server.service import Conflict, ControlPlane, InvalidName, InvalidRequest, NotFound, Unavailable
from ray_app.server.settings import ServerSettings
from ray_app.templates import InvalidName as InvalidTemplateName
from ray_app.templates import TemplateExists, TemplateNotFound

API_PREFIX = "/api/v1"
logger = logging.getLogger(__name__)

# User errors as HTTP: the most specific class first.
STATUS_OF: tuple[tuple[type[UserError], int, str], ...] = (
    (InvalidName, 400, "invalid name"),
    (InvalidTemplateName, 400, "invalid name"),
    (NotFound, 404, "not found"),
    (TemplateNotFound, 404, "not found"),
    (ExampleNotFound, 404, "not found"),
    (Conflict, 409, "conflict"),
    (TemplateExists, 409, "conflict"),
    (InsightsNotReady, 409, "not ready"),
    (InsightsError, 422, "invalid request"),
    (ConfigError, 422, "invalid config"),
    (DataError, 422, "invalid data"),
    (InvalidRequest, 422, "invalid request"),
    (Unavailable, 503, "unavailable"),
    (UserError, 422, "invalid request"),
)


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def create_app(settings: ServerSettings | None = None, **options: Any) -> FastAPI:
    settings = settings or ServerSettings(**options)
    plane = ControlPlane(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane.start()
        try:
            yield
        finally:
            plane.stop()

    app = FastAPI(
        title="ray-app control plane",
        version=__version__,
        description="Launch runs as Ray jobs, follow their metrics and logs live, compare them, and keep "
        "templates and model families.",
        lifespan=lifespan,
    )
    app.state.plane = plane
    secured = [Depends(require_token)]
    for router in (runs.router, templates.router, families.router, insights.router, configs.router):
        app.include_router(router, prefix=API_PREFIX, dependencies=secured)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files, name="static")

    @app.get("/healthz", tags=["service"], summary="Liveness, and whether the Ray job server is reachable")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok", "version": __version__, "runs_root": str(settings.runs_root),
            "ray": {"address": plane.launcher.address, "ready": plane.launcher.ready, "error": plane.launcher.error},
        }

    @app.post(f"{API_PREFIX}/index/rebuild", tags=["service"], dependencies=secured,
              summary="Rebuild the run index from the runs root")
    def rebuild_index() -> dict[str, int]:
        return {"runs": plane.index.rebuild()}

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        status, error = next((s, e) for cls, s, e in STATUS_OF if isinstance(exc, cls))
        detail: Any = exc.problems if isinstance(exc, ConfigError) else str(exc)
        return error_response(status, error, detail)

    @app.middleware("http")
    async def refuse_path_like_names(request: Request, call_next: Any) -> Any:
        """A name that is a path (`../x`, an encoded `/`) never reaches a handler: no
        request may address anything outside the runs and templates roots."""
        raw = request.scope.get("raw_path", b"").decode("latin-1").lower()
        if request.url.path.startswith(API_PREFIX) and ("%2f" in raw or "%5c" in raw or "/../" in f"{raw}/"
                                                        or "%2e%2e" in raw):
            return error_response(400, "invalid name", "names are single path segments: no '/', '\\' or '..'")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(400, "invalid JSON", "the request body is not valid JSON")
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return error_response(422, "invalid request", problems)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, {401: "unauthorized", 404: "not found", 405: "method not allowed"}.get(
            exc.status_code, "error"), exc.detail, dict(exc.headers or {}))

    return app
