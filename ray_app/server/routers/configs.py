"""/api/v1/presets and /api/v1/configs: the YAML presets a launch can start from (the
server's presets directory, `configs/` of a checkout by default) and the resolved form
of a config, every default filled in, as a launch would train it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ray_app.config import read_yaml_mapping, run_name
from ray_app.server.deps import get_plane
from ray_app.server.models import ConfigRequest
from ray_app.server.service import ControlPlane, NotFound, check_name

router = APIRouter(tags=["configs"])
Plane = Annotated[ControlPlane, Depends(get_plane)]


class Preset(BaseModel):
    name: str = Field(description="The preset's file name without .yaml, e.g. digits.")
    command: str = Field(description="The command the preset's first line says runs it.")


def _presets(plane: ControlPlane) -> dict[str, Path]:
    root = plane.settings.presets_root
    if root is None or not root.is_dir():
        return {}
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


@router.get("/presets", response_model=list[Preset], summary="Config presets a launch can start from")
def list_presets(plane: Plane) -> list[Preset]:
    found = []
    for name, path in _presets(plane).items():
        first = path.read_text().splitlines()[:1]
        found.append(Preset(name=name, command=first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""))
    return found


@router.get("/presets/{name}", summary="A preset's config as written")
def get_preset(name: str, plane: Plane) -> dict[str, Any]:
    path = _presets(plane).get(check_name(name, "preset"))
    if path is None:
        raise NotFound(f"no preset named '{name}'; presets: {', '.join(_presets(plane)) or 'none'}")
    return read_yaml_mapping(path)


@router.post("/configs/resolve", summary="A config (or template) with overrides, validated, every default filled in")
def resolve_config(request: ConfigRequest, plane: Plane) -> dict[str, Any]:
    raw = plane.source_config(request.template, request.config)
    cfg = plane.resolve_config(raw, request.overrides)
    return {"run": run_name(cfg), "config": cfg.resolved_dict()}
