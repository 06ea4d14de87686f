"""/api/v1/runs/{name}/monitor: how the run's served model is doing without labels
(`ray_app.monitoring`), over a sliding window of its recorded answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ray_app.control_plane.deps import ExistingRun, Plane
from ray_app.control_plane.loop_models import MonitorWindow
from ray_app.monitoring import monitor_run

router = APIRouter(tags=["monitor"])


@router.get("/runs/{name}/monitor", response_model=MonitorWindow,
            summary="The served model's last window: decision mix, confidence drift, estimated accuracy")
def monitor(
    name: ExistingRun,
    plane: Plane,
    window_s: Annotated[float, Query(gt=0, le=30 * 86_400, description="Window length in seconds (up to 30 days).")] = 3600,
    model_version: Annotated[str | None, Query(max_length=200, description="A model version of the run; "
                                                "default its bundle's (else the one that answered).")] = None,
    drift_psi: Annotated[float | None, Query(gt=0, le=10, description="PSI above which drift is flagged; "
                                             "default the server's drift_psi setting.")] = None,
    drift_p: Annotated[float | None, Query(gt=0, lt=1, description="Significance level of the drift tests; "
                                           "default the server's drift_p setting.")] = None,
) -> dict[str, Any]:
    settings = plane.settings
    return monitor_run(plane.run(name), settings.runs_root, window_s, model_version,
                       settings.drift_psi if drift_psi is None else drift_psi,
                       settings.drift_p if drift_p is None else drift_p)
