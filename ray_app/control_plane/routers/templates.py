"""/api/v1/templates: saved, described configs — list, read, suggest a name and a
description for a config, save (validated; names unique), delete. Launching one is
`POST /api/v1/runs {"template": name}`."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, status

from ray_app.config import apply_overrides, validate_config
from ray_app.control_plane.deps import Plane
from ray_app.control_plane.models import ConfigRequest, SaveTemplateRequest, TemplateSummary
from ray_app.control_plane.service import ControlPlane, check_name
from ray_app.errors import ConfigError
from ray_app.templates import Template, TemplateSuggestion, suggest_template

router = APIRouter(prefix="/templates", tags=["templates"])


def _summary(plane: ControlPlane, template: Template) -> TemplateSummary:
    return TemplateSummary(
        name=template.name, description=template.description, family=template.family,
        created=template.created.isoformat(), runs=plane.index.list(template=template.name, limit=1).total,
    )


@router.get("", response_model=list[TemplateSummary], summary="Every template, by name")
def list_templates(plane: Plane) -> list[TemplateSummary]:
    return [_summary(plane, t) for t in plane.templates.list()]


@router.post("/suggest", response_model=TemplateSuggestion,
             summary="A generated name and description for a config (or a template plus overrides)")
def suggest(request: ConfigRequest, plane: Plane) -> TemplateSuggestion:
    raw = plane.source_config(request.template, request.config)
    return suggest_template(plane.resolve_config(raw, request.overrides))


@router.post("", response_model=Template, status_code=status.HTTP_201_CREATED,
             summary="Save a template: the config is validated in full; an existing name is 409 unless overwrite")
def save_template(request: SaveTemplateRequest, plane: Plane) -> Template:
    check_name(request.name, "template")
    raw: dict[str, Any] = copy.deepcopy(request.config)
    problems = apply_overrides(raw, request.overrides)
    if problems:
        raise ConfigError(problems, "overrides")
    validate_config(copy.deepcopy(raw), f"template '{request.name}'")  # every problem at once, nothing written
    template = Template(name=request.name, description=request.description, config=raw)
    return plane.templates.save(template, overwrite=request.overwrite)


@router.get("/{name}", response_model=Template, summary="One template: description and config as written")
def get_template(name: str, plane: Plane) -> Template:
    return plane.templates.get(check_name(name, "template"))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a template (runs launched from it keep its record)")
def delete_template(name: str, plane: Plane) -> None:
    plane.templates.delete(check_name(name, "template"))
