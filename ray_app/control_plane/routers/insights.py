"""What a run's model learned, for the dashboard: the meaning map, single val_test
examples, the storyboard, the calibration views and the insights summary
(`ray_app.insights`, read from the run's own files), and the compute budget of a
config before it is launched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Query

from ray_app import insights
from ray_app.budget import cached_budget
from ray_app.control_plane.deps import Plane
from ray_app.control_plane.insight_models import (
    Budget,
    CalibrationViews,
    ExampleDetail,
    InsightsSummary,
    LrRange,
    MeaningMap,
    Storyboard,
)
from ray_app.control_plane.models import ConfigRequest
from ray_app.control_plane.service import ControlPlane
from ray_app.errors import InvalidRequest, NotFound
from ray_app.runs import Run

router = APIRouter(tags=["insights"])
# Measuring a budget that is not cached reads the data and times a few training steps.
BUDGET_TIMEOUT_S = 600


def _run(plane: ControlPlane, name: str) -> Run:
    plane.require_run(name)
    return plane.run(name)


@router.get("/runs/{name}/lr-range", response_model=LrRange,
            summary="The learning-rate range test of a run trained with lr: auto",
            responses={404: {"description": "No such run, or the run did not use lr: auto."}})
def lr_range(name: str, plane: Plane) -> dict[str, Any]:
    run = _run(plane, name)
    if not run.train.lr_range.is_file():
        raise NotFound(f"run '{name}' has no learning-rate range test: it ran with a fixed training.lr, not lr: auto")
    return json.loads(run.train.lr_range.read_text())


@router.get("/runs/{name}/meaning-map", response_model=MeaningMap, response_model_exclude_unset=True,
            summary="val_test in the model's feature space, 2-D (cached per model, rows, method, seed)")
def meaning_map(
    name: str,
    plane: Plane,
    method: Annotated[Literal["pca", "tsne"], Query(description="pca (fast) or tsne.")] = "pca",
    seed: Annotated[int | None, Query(ge=0, description="Row sample and t-SNE seed; default the run's insights.seed.")] = None,
    color: Annotated[Literal["label", "prediction", "decision", "correct"] | None,
                     Query(description="Adds each point's value of that field as `color`.")] = None,
    max_points: Annotated[int | None, Query(ge=3, le=20_000, description="Most points shown; default the run's.")] = None,
) -> dict[str, Any]:
    return insights.meaning_map(_run(plane, name), method, None, seed, color, max_points)


@router.get("/runs/{name}/examples/{example_id}", response_model=ExampleDetail, response_model_exclude_unset=True,
            summary="One val_test example: its image (base64 PNG) or text, label, prediction, decision")
def example(
    name: str, example_id: str, plane: Plane,
    thumbnail_px: Annotated[int, Query(ge=8, le=512, description="Longest side of the image thumbnail.")] = 128,
) -> dict[str, Any]:
    return insights.example(_run(plane, name), example_id, thumbnail_px)


@router.get("/runs/{name}/storyboard", response_model=Storyboard,
            summary="Real val_test examples per outcome and the most confused class pairs")
def storyboard(name: str, plane: Plane) -> dict[str, Any]:
    return insights.storyboard(_run(plane, name))


@router.get("/runs/{name}/calibration-views", response_model=CalibrationViews,
            summary="Reliability bins, decisions, risk-coverage and the guardrail sweep, as data")
def get_calibration_views(name: str, plane: Plane) -> dict[str, Any]:
    return insights.saved_calibration_views(_run(plane, name))


@router.get("/runs/{name}/insights", response_model=InsightsSummary,
            summary="What the insights stage recorded: counts, reference model, timings")
def insights_summary(name: str, plane: Plane) -> dict[str, Any]:
    return insights.summary(_run(plane, name))


@router.post("/budget", response_model=Budget,
             summary="The compute budget of a config before launching it: rows, tokens or patches, parameters, FLOPs, epoch time")
def budget(request: ConfigRequest, plane: Plane) -> dict[str, Any]:
    """Measured on this server's machine. A budget asked for before (same data, model
    and preprocessing) is a file read; otherwise `ray-app budget` measures it in a
    process of its own (it may start Ray to plan the splits), so this server's process
    never holds the model or Ray Data."""
    raw = plane.source_config(request.template, request.config)
    cfg = plane.resolve_config(raw, request.overrides)
    cached = cached_budget(cfg)
    if cached is not None:
        return cached
    text = yaml.safe_dump(cfg.resolved_dict(), sort_keys=False)
    config_file = plane.settings.runs_root / ".budget" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own unless the config names one
    try:
        done = subprocess.run([sys.executable, "-m", "ray_app", "budget", str(config_file), "--json"],
                              capture_output=True, text=True, timeout=BUDGET_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidRequest(f"measuring the budget took over {BUDGET_TIMEOUT_S} s; try a smaller config") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        if done.returncode == 2:
            raise InvalidRequest(f"cannot measure this config's budget: {reason}")
        raise RuntimeError(f"ray-app budget failed (exit {done.returncode}): {reason}")
    return json.loads(done.stdout)
