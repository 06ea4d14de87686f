"""The registry of model families: the built-ins plus every entry point in the group
`ray_app.families` (a `ModelFamily` instance or subclass), so another package adds a
family without editing this one. `family_of(backbone)` finds a config's family: a
directory is `pretrained`, a config dict goes by its `model_type`, and a model_type no
family claims goes to the generic family."""

from __future__ import annotations

import functools
import logging
import re
from importlib.metadata import EntryPoint, entry_points

from trainers.families.builtin import (
    BertFamily,
    ConvNextFamily,
    Dinov2Family,
    DINOv3ViTFamily,
    GenericFamily,
    ViTFamily,
)
from trainers.families.family import BackboneSection, ModelFamily, PretrainedFamily
from trainers.families.params import FamilyParams

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ray_app.families"
# Family names appear in URLs (/api/v1/families/{name}) and run metadata.
FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


BUILTIN_FAMILIES: tuple[ModelFamily, ...] = (
    ViTFamily(), Dinov2Family(), DINOv3ViTFamily(), ConvNextFamily(), BertFamily(), PretrainedFamily(), GenericFamily(),
)
_BUILTIN_BY_NAME = {family.name: family for family in BUILTIN_FAMILIES}
_BUILTIN_BY_MODEL_TYPE = {family.model_type: family for family in BUILTIN_FAMILIES if family.model_type}
PRETRAINED = _BUILTIN_BY_NAME["pretrained"]
GENERIC = _BUILTIN_BY_NAME["generic"]


def family_registry() -> dict[str, ModelFamily]:
    """Every family by name: the built-ins, then those of installed packages (entry
    points in the `ray_app.families` group), read once per process (`reload_families`
    reads them again). A third-party entry point that fails to load, is not a family or
    takes a name already used is skipped with a warning naming it."""
    return dict(_registry())


def reload_families() -> None:
    """Forget the entry points read so far: the next lookup reads them again (after a
    package was installed into the running process, and in tests)."""
    _registry.cache_clear()


@functools.cache
def _registry() -> dict[str, ModelFamily]:
    families = dict(_BUILTIN_BY_NAME)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = _load_family(entry_point)
        except Exception as exc:  # another package's bug must not take every family down
            logger.warning(
                "model family entry point '%s' (%s = %s) skipped: %s: %s",
                entry_point.name, ENTRY_POINT_GROUP, entry_point.value, type(exc).__name__, exc,
            )
            continue
        if family.name in families:
            logger.warning(
                "model family entry point '%s' (%s) skipped: the name '%s' is already taken by %r",
                entry_point.name, entry_point.value, family.name, families[family.name],
            )
            continue
        families[family.name] = family
    return families


def _load_family(entry_point: EntryPoint) -> ModelFamily:
    loaded = entry_point.load()
    family = loaded() if isinstance(loaded, type) and issubclass(loaded, ModelFamily) else loaded
    if not isinstance(family, ModelFamily):
        raise TypeError(f"it loads {loaded!r}, not a ModelFamily instance or subclass")
    problems = family_problems(family)
    if family.name != entry_point.name:
        problems.append(f"it is registered as '{entry_point.name}' but its name is '{family.name}'")
    if problems:
        raise ValueError("; ".join(problems))
    return family


def family_problems(family: ModelFamily) -> list[str]:
    """What keeps a family object from working in the registry: missing or wrong class
    attributes, found before any config uses it."""
    problems = []
    for attribute in ("name", "title", "description", "variant_pattern"):
        if not isinstance(getattr(family, attribute, None), str) or not getattr(family, attribute):
            problems.append(f"{attribute} must be a non-empty string")
    if isinstance(getattr(family, "name", None), str) and not FAMILY_NAME.fullmatch(family.name):
        problems.append(f"name '{family.name}' must be lower-case letters, digits and _")
    if getattr(family, "modality", None) not in ("image", "text", "any"):
        problems.append(f"modality must be image, text or any, not {getattr(family, 'modality', None)!r}")
    params_model = getattr(family, "params_model", None)
    if not (isinstance(params_model, type) and issubclass(params_model, FamilyParams)):
        problems.append("params_model must be a subclass of trainers.families.FamilyParams")
    else:
        undescribed = sorted(n for n, f in params_model.model_fields.items() if not f.description)
        if undescribed:
            problems.append(f"parameters {undescribed} have no description")
    return problems


def family_for_model_type(model_type: str) -> ModelFamily:
    """The family whose config dicts name this model_type: a built-in first (no entry
    point is read for those), then a registered one, else the generic family."""
    if model_type in _BUILTIN_BY_MODEL_TYPE:
        return _BUILTIN_BY_MODEL_TYPE[model_type]
    for family in _registry().values():
        if family.model_type == model_type:
            return family
    return GENERIC


def family_of(backbone: BackboneSection) -> ModelFamily:
    """A config's backbone family: a directory (`id`) is `pretrained`, a config dict
    goes by its `model_type`."""
    if backbone.config is None:
        return PRETRAINED
    return family_for_model_type(str(backbone.config["model_type"]))


def family_and_params(backbone: BackboneSection) -> tuple[ModelFamily, FamilyParams]:
    """A config's backbone as (family, its parameters)."""
    family = family_of(backbone)
    return family, family.params_of(backbone)
