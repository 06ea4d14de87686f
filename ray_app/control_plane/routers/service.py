"""The service itself: liveness (open, so probes need no token) and rebuilding the run
index from the runs root."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ray_app import __version__
from ray_app.control_plane.deps import Plane
from ray_app.control_plane.models import HealthStatus, IndexRebuilt

health_router = APIRouter(tags=["service"])
router = APIRouter(tags=["service"])


@health_router.get("/healthz", response_model=HealthStatus, summary="Liveness, and whether the Ray job server is reachable")
def healthz(plane: Plane) -> dict[str, Any]:
    launcher = plane.launcher
    return {
        "status": "ok", "version": __version__, "runs_root": str(plane.settings.runs_root),
        "ray": {"address": launcher.address, "ready": launcher.ready, "error": launcher.error},
    }


@router.post("/index/rebuild", response_model=IndexRebuilt, summary="Rebuild the run index from the runs root")
def rebuild_index(plane: Plane) -> dict[str, int]:
    return {"runs": plane.index.rebuild()}
