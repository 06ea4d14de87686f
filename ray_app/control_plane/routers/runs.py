"""/api/v1/runs: launch, list, inspect, compare, stop, rerun and delete runs; their
metrics and logs, as bounded reads and as live Server-Sent Events streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Header, Query, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ray_app.control_plane.deps import ExistingRun, Plane
from ray_app.control_plane.jobs import ACTIVE_STATES
from ray_app.control_plane.models import (
    LaunchRequest,
    LaunchResponse,
    RerunRequest,
    RunComparison,
    RunDetail,
    RunList,
    RunLogTail,
    RunMetrics,
    RunStopped,
    RunSummary,
    SortKey,
    TrainingProgress,
)
from ray_app.control_plane.service import ControlPlane, check_name
from ray_app.dotted import flatten_dotted
from ray_app.errors import InvalidRequest
from ray_app.run_status import read_metrics
from ray_app.runlog import MAX_TAIL_LINES, read_from, tail_lines, tail_offset
from ray_app.stages import STAGE_NAMES
from serve.bundle import is_bundle

router = APIRouter(prefix="/runs", tags=["runs"])

# How often a live stream looks at a run's files; and the longest a stream stays open.
STREAM_POLL_S = 0.5
MAX_COMPARE = 10


@router.get("", response_model=RunList, summary="List runs, filtered and sorted (from the index)")
def list_runs(
    plane: Plane,
    status_: Annotated[str | None, Query(alias="status", description="pending, running, succeeded, failed, stopped, incomplete")] = None,
    family: Annotated[str | None, Query(description="Model family, e.g. vit.")] = None,
    template: Annotated[str | None, Query(description="Template name.")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text in the name, family, backbone, dataset or template.")] = None,
    sort: Annotated[SortKey, Query(description="created, name, or a metric.")] = "created",
    order: Annotated[Literal["asc", "desc"] | None, Query(description="Default: best (or newest) first.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> RunList:
    page = plane.index.list(status_, family, template, q, sort, None if order is None else order == "desc", limit, offset)
    return RunList(total=page.total, limit=limit, offset=offset, runs=[RunSummary(**r) for r in page.runs])


@router.post("", response_model=LaunchResponse, status_code=status.HTTP_201_CREATED,
             summary="Launch a run as a Ray job, from a template or a config plus overrides",
             responses={409: {"description": "A run of that name exists (or is running): the body names it "
                                              "(`run`, `link`); choose `on_exists`."}})
def launch_run(request: LaunchRequest, plane: Plane) -> LaunchResponse:
    if request.template is not None:
        launched = plane.launch_template(request.template, request.overrides, request.on_exists)
    else:
        launched = plane.launch(request.config or {}, request.overrides, on_exists=request.on_exists)
    return LaunchResponse(**launched.__dict__)


@router.get("/compare", response_model=RunComparison,
            summary="Config differences and results of several runs side by side")
def compare_runs(
    plane: Plane,
    names: Annotated[str, Query(description="Comma-separated run names, 2 to 10.")],
) -> dict[str, Any]:
    wanted = [check_name(n.strip()) for n in names.split(",") if n.strip()]
    if not 2 <= len(dict.fromkeys(wanted)) <= MAX_COMPARE:
        raise InvalidRequest(f"compare takes 2 to {MAX_COMPARE} distinct run names, got {len(set(wanted))}")
    rows = {name: plane.require_run(name) for name in dict.fromkeys(wanted)}
    configs = {name: flatten_dotted(_run_config(plane, name)) for name in rows}
    keys = sorted({k for flat in configs.values() for k in flat})
    differences = [
        {"key": key, "values": {name: configs[name].get(key) for name in rows}}
        for key in keys
        if len({json.dumps(configs[name].get(key), sort_keys=True) for name in rows}) > 1
    ]
    curves = {
        name: read_metrics(plane.run(name).train.metrics, 10_000,
                           keys=["train/loss", "val_select/loss", "val_select/accuracy", "val_select/macro_f1", "lr"])
        for name in rows
    }
    return {"runs": list(rows), "config_diff": differences, "results": rows, "curves": curves}


@router.get("/{name}", response_model=RunDetail, response_model_exclude_unset=True,
            summary="One run: config, stages, results, policy, bundle, job")
def get_run(name: str, plane: Plane) -> dict[str, Any]:
    row = plane.require_run(name)
    run = plane.run(name)
    meta = run.metadata()
    stages = meta.get("stages") or {}
    calibration = run.calibration
    export = stages.get("export") or {}
    job = plane.index.latest_job(name)
    log = run.log_path
    return {
        **row,
        "path": str(run.root),
        "config": _run_config(plane, name),
        "launch": meta.get("launch"),
        "template_record": meta.get("template"),
        "stages": stages,
        "stage_order": list(STAGE_NAMES),
        "best": (stages.get("train") or {}).get("best"),
        "progress": _json(run.train.progress),
        "calibration": {
            "temperature": _json(calibration.temperature),
            "guardrail": _without(_json(calibration.guardrail), "results"),
            "threshold": _without(_json(calibration.thresholds), "candidates"),
            "risk_control": _json(calibration.risk_control),
        },
        "policy": _json(calibration.policy),
        "evaluation": _json(run.evaluation),
        "bundle": {
            "path": str(run.bundle_dir), "model_version": export.get("model_version"),
            "serve_command": f"ray-app serve {run.bundle_dir}",
        } if is_bundle(run.bundle_dir) else None,
        "job": job,
        "logs": {"path": str(log), "bytes": log.stat().st_size if log.is_file() else 0},
    }


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a finished run's directory")
def delete_run(name: str, plane: Plane) -> None:
    plane.delete_run(name)


@router.post("/{name}/stop", response_model=RunStopped, summary="Stop the run's Ray job")
def stop_run(name: str, plane: Plane) -> dict[str, Any]:
    return plane.stop_run(name)


@router.post("/{name}/rerun", response_model=LaunchResponse, status_code=status.HTTP_201_CREATED,
             summary="Launch the run's config again, with optional overrides")
def rerun(name: str, plane: Plane, request: RerunRequest | None = None) -> LaunchResponse:
    request = request or RerunRequest()
    return LaunchResponse(**plane.rerun(name, request.overrides, request.on_exists, request.with_reviewed).__dict__)


# --- metrics ----------------------------------------------------------------------------


@router.get("/{name}/metrics", response_model=RunMetrics,
            summary="Epoch metrics history, read from the end of metrics.jsonl")
def get_metrics(
    name: str,
    plane: Plane,
    keys: Annotated[str | None, Query(description="Comma-separated columns to keep (epoch always kept).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    since_epoch: Annotated[int | None, Query(ge=-1, description="Only epochs after this one.")] = None,
) -> dict[str, Any]:
    plane.require_run(name)
    wanted = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    rows = read_metrics(plane.run(name).train.metrics, limit, order, since_epoch, wanted)
    return {"run": name, "rows": rows}


def _active(plane: ControlPlane, name: str) -> tuple[bool, dict[str, Any] | None]:
    row = plane.index.get(name)
    return (row is not None and row["status"] in ACTIVE_STATES), row


@router.get("/{name}/metrics/stream", response_class=EventSourceResponse,
            summary="Server-Sent Events: the history, then each new epoch; 'end' when the run ends")
async def stream_metrics(
    name: ExistingRun,
    plane: Plane,
    since_epoch: Annotated[int | None, Query(ge=-1, description="Start after this epoch (default: all).")] = None,
    last_event_id: Annotated[str | None, Header(description="Set by EventSource on reconnect: the last epoch seen.")] = None,
) -> AsyncIterator[ServerSentEvent]:
    path = plane.run(name).train.metrics
    last = int(last_event_id) if last_event_id and last_event_id.lstrip("-").isdigit() else (
        -1 if since_epoch is None else since_epoch
    )
    while True:
        active, row = _active(plane, name)
        rows = await asyncio.to_thread(read_metrics, path, 10_000, "asc", last)
        for metrics in rows:
            yield ServerSentEvent(data=metrics, event="metrics", id=str(metrics["epoch"]))
            last = int(metrics["epoch"])
        if not rows and not active:
            yield ServerSentEvent(data={"status": (row or {}).get("status"), "message": (row or {}).get("message")},
                                  event="end", id=str(last))
            return
        await asyncio.sleep(STREAM_POLL_S)


# --- logs -------------------------------------------------------------------------------


@router.get("/{name}/logs", response_model=RunLogTail, summary="The last lines of the run's log")
def get_logs(
    name: ExistingRun,
    plane: Plane,
    tail: Annotated[int, Query(ge=1, le=MAX_TAIL_LINES, description=f"Lines from the end (at most {MAX_TAIL_LINES}).")] = 200,
) -> dict[str, Any]:
    path = plane.run(name).log_path
    size = path.stat().st_size if path.is_file() else 0
    return {"run": name, "path": str(path), "lines": tail_lines(path, tail), "offset": size}


@router.get("/{name}/logs/stream", response_class=EventSourceResponse,
            summary="Server-Sent Events: new log lines as they are written (byte offset as the event id)")
async def stream_logs(
    name: ExistingRun,
    plane: Plane,
    offset: Annotated[int | None, Query(ge=0, description="Start at this byte offset (default: the last `tail` lines).")] = None,
    tail: Annotated[int, Query(ge=0, le=MAX_TAIL_LINES)] = 100,
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    path = plane.run(name).log_path
    if last_event_id and last_event_id.isdigit():
        position = int(last_event_id)
    elif offset is not None:
        position = offset
    else:
        position = await asyncio.to_thread(tail_offset, path, tail)
    while True:
        active, row = _active(plane, name)
        lines, position = await asyncio.to_thread(read_from, path, position)
        if lines:
            yield ServerSentEvent(data={"lines": lines}, event="log", id=str(position))
        elif not active:
            yield ServerSentEvent(data={"status": (row or {}).get("status")}, event="end", id=str(position))
            return
        await asyncio.sleep(STREAM_POLL_S)


@router.get("/{name}/progress", response_model=TrainingProgress, response_model_exclude_unset=True,
            summary="Where training is inside the current epoch (rank 0's progress.json)")
def get_progress(name: str, plane: Plane) -> dict[str, Any]:
    return _json(plane.run(name).train.progress) or {}


# --- helpers ----------------------------------------------------------------------------


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _without(data: Any, key: str) -> Any:
    return {k: v for k, v in data.items() if k != key} if isinstance(data, dict) else data


def _run_config(plane: ControlPlane, name: str) -> dict[str, Any]:
    path = plane.run(name).config_path
    if not path.is_file():
        job = plane.index.latest_job(name)
        path = Path(job["config_path"]) if job and job.get("config_path") else path
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
