"""/api/v1/runs/{name}/monitor: how the run's served model is doing without labels
(`ray_app.monitoring`), over a sliding window of its recorded answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ray_app.control_plane.deps import ExistingRun, Plane
from ray_app.control_plane.loop_models import MonitorWindow
from ray_app.monitoring import DEFAULT_DRIFT_PSI, monitor_run

router = APIRouter(tags=["monitor"])


@router.get("/runs/{name}/monitor", response_model=MonitorWindow,
            summary="The served model's last window: decision mix, confidence drift, estimated accuracy")
def monitor(
    name: ExistingRun,
    plane: Plane,
    window_s: Annotated[float, Query(gt=0, le=30 * 86_400, description="Window length in seconds (up to 30 days).")] = 3600,
    model_version: Annotated[str | None, Query(max_length=200, description="A model version of the run; "
                                                "default its bundle's (else the one that answered).")] = None,
    drift_psi: Annotated[float, Query(gt=0, le=10, description="PSI above which drift is flagged.")] = DEFAULT_DRIFT_PSI,
) -> dict[str, Any]:
    return monitor_run(plane.run(name), plane.settings.runs_root, window_s, model_version, drift_psi)
