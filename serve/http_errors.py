"""The error body both HTTP services of ray-app answer with (the Serve app and the
control plane): `{"error": what went wrong in a few words, "detail": why and how to
fix it}` with a 4xx status, so a client handles one shape everywhere."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from trainers.schema import error_location, error_message


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    """A request body's problems, one `{"loc", "msg"}` per field."""
    return [{"loc": error_location(e), "msg": error_message(e)} for e in exc.errors(include_url=False, include_input=False)]
