"""The control plane's FastAPI application.

    create_app(ServerSettings(runs_root=..., ray_address=...))   # importable
    ray-app server [--host --port --ray-address --runs-root]     # the same, under uvicorn

One router per resource under /api/v1, every one behind the bearer token when one is
set; /healthz, /docs and /openapi.json stay open. Every error is JSON
`{"error", "detail"}` with a 4xx status, and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ray_app import __version__
from ray_app.control_plane import dashboard
from ray_app.control_plane.deps import require_token
from ray_app.control_plane.routers import configs, families, insights, monitor, review, runs, service, templates
from ray_app.control_plane.service import ControlPlane
from ray_app.control_plane.settings import ServerSettings
from ray_app.errors import ConfigError, UserError
from serve.http_errors import BodyLimit, error_response, error_responses
from trainers.schema import describe_error

API_PREFIX = "/api/v1"
BODY_ADVICE = ("send less (a config, not data: data goes in data.source.path), or start the server with a larger "
               "max_body_bytes")
logger = logging.getLogger(__name__)


def create_app(settings: ServerSettings | None = None, **options: Any) -> FastAPI:
    """The control plane's app: the API under /api/v1 (behind the token when one is
    set), /healthz, and the dashboard."""
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
    for router in (runs.router, templates.router, families.router, insights.router, monitor.router, review.router,
                   configs.router, service.router):
        app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(require_token)],
                           responses=error_responses(400, 401, 404, 409, 413, 422, 503))
    app.include_router(service.health_router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files, name="static")
    app.middleware("http")(refuse_path_like_names)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, advice=BODY_ADVICE)
    app.add_exception_handler(UserError, user_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    return app


async def refuse_path_like_names(request: Request, call_next: Any) -> Any:
    """A name that is a path (`../x`, an encoded `/`) never reaches a handler: no
    request may address anything outside the runs and templates roots."""
    raw = request.scope.get("raw_path", b"").decode("latin-1").lower()
    if request.url.path.startswith(API_PREFIX) and ("%2f" in raw or "%5c" in raw or "/../" in f"{raw}/"
                                                    or "%2e%2e" in raw):
        return error_response(400, "invalid name", "names are single path segments: no '/', '\\' or '..'")
    return await call_next(request)


async def user_error(request: Request, exc: UserError) -> JSONResponse:
    """A problem the client can fix: the status the error carries, its message (every
    problem of a config)."""
    detail: Any = exc.problems if isinstance(exc, ConfigError) else str(exc)
    return error_response(exc.http_status, exc.http_error, detail, **exc.http_fields())


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return error_response(400, "invalid JSON", "the request body is not valid JSON")
    return error_response(422, "invalid request", [describe_error(e, top_level="") for e in exc.errors()])


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, {401: "unauthorized", 404: "not found", 405: "method not allowed"}.get(
        exc.status_code, "error"), exc.detail, dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as JSON so a client still reads a reason."""
    logger.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal error", f"{type(exc).__name__}: {exc}")
