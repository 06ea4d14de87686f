"""/api/v1/presets and /api/v1/configs: the YAML presets a launch can start from (the
server's presets directory, `configs/` of a checkout by default) and the resolved form
of a config, every default filled in, as a launch would train it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from ray_app.config import read_yaml_mapping, run_name
from ray_app.control_plane.deps import Plane
from ray_app.control_plane.models import ConfigDocument, ConfigRequest, Preset, ResolvedConfig
from ray_app.control_plane.service import ControlPlane, check_name
from ray_app.errors import NotFound

router = APIRouter(tags=["configs"])


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


@router.get("/presets/{name}", response_model=ConfigDocument, response_model_exclude_unset=True,
            summary="A preset's config as written")
def get_preset(name: str, plane: Plane) -> dict[str, Any]:
    path = _presets(plane).get(check_name(name, "preset"))
    if path is None:
        raise NotFound(f"no preset named '{name}'; presets: {', '.join(_presets(plane)) or 'none'}")
    return read_yaml_mapping(path)


@router.post("/configs/resolve", response_model=ResolvedConfig, response_model_exclude_unset=True,
             summary="A config (or template) with overrides, validated, every default filled in")
def resolve_config(request: ConfigRequest, plane: Plane) -> dict[str, Any]:
    raw = plane.source_config(request.template, request.config)
    cfg = plane.resolve_config(raw, request.overrides)
    return {"run": run_name(cfg), "config": cfg.resolved_dict(), "existing": plane.existing_run(cfg)}
