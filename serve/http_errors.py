"""What both HTTP services of ray-app (the Serve app and the control plane) share: the
error body `{"error": what went wrong in a few words, "detail": why and how to fix it}`
with a 4xx status, so a client handles one shape everywhere, and the request body limit
that answers with it."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.schema import error_location, error_message


class ErrorBody(BaseModel):
    """The body of every 4xx (and of a 500, should a bug cause one)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="What went wrong, in a few words (e.g. 'not found', 'invalid config').")
    detail: Any = Field(description="Why, and how to fix it: a sentence, or a list of every problem found.")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting the error body for these statuses (in place of
    FastAPI's default 422 schema, which is not what these services answer)."""
    return {status: {"model": ErrorBody, "description": HTTP_ERROR_MEANINGS.get(status, "Error.")} for status in statuses}


HTTP_ERROR_MEANINGS = {
    400: "A malformed request: invalid JSON, or a name that is a path.",
    401: "The bearer token is missing or wrong.",
    404: "No such run, template, family, preset or example.",
    409: "Conflicts with the current state: the run exists or is running, or has not produced this yet.",
    413: "The request body is larger than the server reads.",
    422: "Values that cannot be used: every problem, each with where it is.",
    503: "A backend the request needs (the Ray job server) is not reachable; the detail says why.",
}


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None,
                   **fields: Any) -> JSONResponse:
    """`fields`: what a client acts on beyond the reason (the run a conflict is about)."""
    return JSONResponse({"error": error, "detail": detail, **fields}, status_code=status, headers=headers)


def validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    """A request body's problems, one `{"loc", "msg"}` per field."""
    return [{"loc": error_location(e), "msg": error_message(e)} for e in exc.errors(include_url=False, include_input=False)]


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 with the error
    body, before the app reads any of it: by Content-Length when sent, else by counting
    the chunks as they arrive (buffered, so at most `max_bytes`, then replayed to the
    app). Starlette's own limit answers in plain text, which no client here parses."""

    def __init__(self, app: Any, max_bytes: int, advice: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.advice = advice

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        messages: list[dict[str, Any]] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        reason = f"the request body is over the limit of {self.max_bytes:,} bytes; {self.advice}"
        await error_response(413, "request too large", reason)(scope, receive, send)
