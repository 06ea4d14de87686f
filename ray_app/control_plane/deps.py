"""FastAPI dependencies: the control plane of this app (`Plane`, the one alias every
router takes), a run that must exist (`ExistingRun`), a run's review queue
(`RunReviews`), and the bearer token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from ray_app.control_plane.service import ControlPlane
from ray_app.review import ReviewQueue

TOKEN_COOKIE = "ray_app_token"


def get_plane(request: Request) -> ControlPlane:
    return request.app.state.plane


Plane = Annotated[ControlPlane, Depends(get_plane)]


def existing_run(name: str, plane: Plane) -> str:
    """The `{name}` of the path, once a run of that name is known (else 404). As a
    dependency it is checked before a streaming response starts, when a 404 can
    still be answered."""
    plane.require_run(name)
    return name


ExistingRun = Annotated[str, Depends(existing_run)]


def require_token(request: Request) -> None:
    """With a token configured, every API request carries it: as `Authorization: Bearer
    <token>`, or as the cookie the dashboard sets (a browser's EventSource cannot send
    headers)."""
    expected = request.app.state.plane.settings.token_value
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    candidate = given.strip() if scheme.lower() == "bearer" else request.cookies.get(TOKEN_COOKIE, "")
    if not candidate or not hmac.compare_digest(candidate.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="send the header 'Authorization: Bearer <token>' (the server's token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def review_queue(name: ExistingRun, plane: Plane) -> ReviewQueue:
    """The review queue of the run `{name}` (404 when there is no such run)."""
    return ReviewQueue(plane.run(name), plane.settings.runs_root)


RunReviews = Annotated[ReviewQueue, Depends(review_queue)]
