"""/api/v1/families: the model families a config can train (built-in and registered
through the `ray_app.families` entry points), each with the JSON schema of its
parameters for a form, and the trained variants found under the runs root."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Body

from ray_app.control_plane.deps import Plane
from ray_app.control_plane.models import FamilyBackbone, FamilySummary, FamilyVariantRow, RunSummary
from ray_app.control_plane.service import check_name
from ray_app.errors import ConfigError, NotFound
from trainers.families import FamilyInfo, InvalidParams, ModelFamily, family_registry

router = APIRouter(prefix="/families", tags=["families"])
MAX_VARIANT_RUNS = 500


def _family(name: str) -> ModelFamily:
    registry = family_registry()
    family = registry.get(check_name(name, "family"))
    if family is None:
        raise NotFound(f"no model family named '{name}'; families: {', '.join(sorted(registry))}")
    return family


@router.get("", response_model=list[FamilySummary], summary="Every model family, with how many runs it has")
def list_families(plane: Plane) -> list[FamilySummary]:
    return [
        FamilySummary(name=f.name, title=f.title, modality=f.modality, description=f.description,
                      model_type=f.model_type, variant_pattern=f.variant_pattern,
                      variants=plane.index.list(family=f.name, limit=1).total)
        for f in family_registry().values()
    ]


@router.get("/{name}", response_model=FamilyInfo,
            summary="One family: description, variant pattern and the JSON schema of its parameters")
def get_family(name: str) -> FamilyInfo:
    return _family(name).info()


@router.post("/{name}/backbone", response_model=FamilyBackbone,
             summary="The `model.backbone` config section for these parameters, validated")
def backbone_section(name: str, params: Annotated[dict[str, Any], Body(description="The family's parameters.")]) -> dict[str, Any]:
    """What a form's values become in a config, checked by the family's own rules
    (every problem at once), with the variant name and description they give."""
    family = _family(name)
    try:
        checked = family.validate_params(params)
    except InvalidParams as exc:
        raise ConfigError(exc.problems, f"{name} parameters") from None
    return {"backbone": family.backbone_section(checked), "variant": family.variant_name(checked),
            "facts": family.describe(checked)}


@router.get("/{name}/variants", response_model=list[FamilyVariantRow],
            summary="The family's trained variants: its runs under the runs root, grouped by variant")
def family_variants(name: str, plane: Plane) -> list[FamilyVariantRow]:
    family = _family(name)
    grouped: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for row in plane.index.list(family=family.name, limit=MAX_VARIANT_RUNS).runs:
        grouped[row["backbone"]].append(row)
    variants = []
    for variant, rows in grouped.items():
        scores = [r["best_accuracy"] for r in rows if r["best_accuracy"] is not None]
        variants.append(FamilyVariantRow(variant=variant, runs=[RunSummary(**r) for r in rows],
                                         best_accuracy=max(scores) if scores else None))
    return sorted(variants, key=lambda v: (v.best_accuracy is None, -(v.best_accuracy or 0), v.variant or ""))
