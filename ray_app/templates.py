"""Templates: named, described configs kept as YAML files a person can review.

A template is one file, `<root>/<name>.yaml` (the templates directory sits next to the
runs root: `templates_dir(runs_root)`), headed by the command that launches it, with
`name`, `description`, `family` and `created` first and the config as written under
`config`. Files rather than a database, so templates can be reviewed, diffed and kept
in version control like the presets in configs/.

`suggest_template(cfg)` proposes a name and a description from the config itself (the
user may edit both before saving); `TemplateStore` lists, reads, saves (validating the
config, never overwriting by accident), deletes and resolves templates into an
`AppConfig`; `record_template` notes in a run's metadata which template launched it.

Every failure is a `UserError`: `InvalidName` (a name that is not a plain file name),
`TemplateNotFound`, `TemplateExists`, and `ConfigError` listing every problem of a
config that does not validate.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from ray_app.config import AppConfig, apply_overrides, dataset_name, validate_config, validate_model
from ray_app.errors import ConfigError, InvalidName, TemplateExists, TemplateNotFound, UserError
from ray_app.runs import Run
from trainers.families import family_and_params
from trainers.schema import StrictModel, describe_error

logger = logging.getLogger(__name__)

TEMPLATES_DIR = "templates"
MAX_NAME_LENGTH = 128
# A plain file name: no separators, no leading dot (no hidden files, no `..`).
TEMPLATE_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
# The command written at the top of every template file.
LAUNCH_COMMAND = "ray-app submit --template {name}"
# How the PEFT methods are written in descriptions.
PEFT_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
FACT_SEPARATOR = " · "


def check_name(name: str) -> str:
    """`name` if it can be a template's file name, else InvalidName saying why."""
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
        raise InvalidName(
            f"template name {name!r} is not allowed: use letters, digits, '.', '_' and '-', not "
            f"starting with '.', at most {MAX_NAME_LENGTH} characters (e.g. vit-h64-l4_sklearn-digits_baseline)"
        )
    return name


def templates_dir(runs_root: str | Path) -> Path:
    """The templates directory that goes with a runs root: its sibling `templates/`."""
    return Path(runs_root).expanduser().absolute().parent / TEMPLATES_DIR


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Template(StrictModel):
    name: str = Field(
        description="Unique name, also the file name: letters, digits, '.', '_' and '-', not "
        "starting with '.'."
    )
    description: str = Field(default="", description="What the template trains, for a person choosing one.")
    config: dict[str, Any] = Field(
        description="The config as written (an AppConfig's sections); validated as an "
        "AppConfig on save, overrides applied to it at launch."
    )
    created: datetime = Field(default_factory=_now, description="When the template was saved (UTC).")
    family: str | None = Field(
        default=None,
        description="The backbone's model family (trainers/families.py); filled in from the "
        "config on save, and refused there when it names another family.",
    )


class TemplateSuggestion(BaseModel):
    name: str = Field(description="Generated name: <variant>_<dataset>_<mode>, e.g. vit-h64-l4_sklearn-digits_baseline.")
    description: str = Field(
        description="Generated description: the backbone's facts, then LR, Batch, Epochs, "
        "Head and the PEFT settings, joined by ' · '."
    )
    family: str = Field(description="The backbone's model family, e.g. vit.")


# --- suggestions ------------------------------------------------------------------------


def training_mode_name(cfg: AppConfig) -> str:
    """How the backbone is trained, as the last part of a template name:

    - `baseline`: the backbone trained in full with the head;
    - `probe`: `model.freeze_backbone`, the head alone (a linear probe);
    - `lora` / `loha` / `lokr`: PEFT adapters of that method on every block;
    - `explora` (LoRA) / `explora-loha` / `explora-lokr`: adapters plus the last
      `unfreeze_last_blocks` blocks trained in full (the ExPLoRA recipe).
    """
    training = cfg.training
    if training.mode == "baseline":
        return "probe" if cfg.model.freeze_backbone else "baseline"
    peft = training.peft
    assert peft is not None  # TrainingConfig fills it in peft mode
    if peft.unfreeze_last_blocks:
        return "explora" if peft.method == "lora" else f"explora-{peft.method}"
    return peft.method


def _name_part(text: str) -> str:
    # `_` separates the parts of a template name, so it never appears inside one.
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text.replace("_", "-")).strip("-.") or "x"


def suggest_template(cfg: AppConfig) -> TemplateSuggestion:
    """A name and a description for a template of `cfg`.

    Name: `<variant>_<dataset>_<mode>` (`vit-h64-l4_sklearn-digits_baseline`): the
    backbone family's variant name, the dataset as in run names and the training mode
    (`training_mode_name`), with `_` turned into `-` inside each part.
    Description: the family's facts (`Hidden: 64 · Layers: 4 · Heads: 4`), then `LR`,
    `Batch`, `Epochs`, `Head`, `Backbone: frozen` for a probe, the PEFT method with its
    rank and alpha (`LoRA r=8 α=16`) and ExPLoRA's `unfrozen: N`."""
    family, params = family_and_params(cfg.model.backbone)
    parts = (family.variant_name(params), dataset_name(cfg), training_mode_name(cfg))
    name = "_".join(_name_part(part) for part in parts)[:MAX_NAME_LENGTH]
    training = cfg.training
    facts = [
        *family.describe(params),
        f"LR: {training.lr if training.lr == 'auto' else format(training.lr, 'g')}",
        f"Batch: {training.batch_size}",
        f"Epochs: {training.epochs}",
        f"Head: {cfg.model.head}",
    ]
    if cfg.model.freeze_backbone:
        facts.append("Backbone: frozen")
    if training.mode == "peft" and training.peft is not None:
        peft = training.peft
        facts.append(f"{PEFT_LABELS[peft.method]} r={peft.r} α={peft.alpha:g}")
        if peft.unfreeze_last_blocks:
            facts.append(f"unfrozen: {peft.unfreeze_last_blocks}")
    return TemplateSuggestion(name=name, description=FACT_SEPARATOR.join(facts), family=family.name)


# --- the store --------------------------------------------------------------------------


class TemplateStore:
    """Templates as `<root>/<name>.yaml` files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.yaml"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.yaml") if TEMPLATE_NAME.fullmatch(p.stem))

    def list(self) -> list[Template]:
        """Every readable template, by name. A file that does not read as a template
        (edited by hand into invalid YAML, say) is left out with a warning naming it and
        why, so one bad file does not hide the others; `get` reports it in full."""
        found = []
        for name in self.names():
            try:
                found.append(self.get(name))
            except UserError as exc:
                logger.warning("template file %s skipped: %s", self.root / f"{name}.yaml", exc)
        return found

    def get(self, name: str) -> Template:
        path = self.path(name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise TemplateNotFound(f"no template named '{name}' in {self.root} (templates: {known})")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError(["the top level must be a mapping with name, description and config"], str(path))
        try:
            template = Template.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError([describe_error(e) for e in exc.errors()], str(path)) from None
        if template.name != name:
            raise ConfigError(
                [f"name: the file says '{template.name}' but is named '{name}.yaml'; make them agree"], str(path)
            )
        return template

    def save(self, template: Template, overwrite: bool = False) -> Template:
        """Validate and write a template; returns what was written (family filled in).

        InvalidName for a name that is not a plain file name; ConfigError listing every
        problem of a config that does not validate; TemplateExists when the name is taken
        and `overwrite` is false (decided atomically: of two saves racing for one name,
        exactly one wins). The file appears whole or not at all."""
        path = self.path(template.name)
        stored = template.model_copy(update={"family": self._checked_family(template)})
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{template.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        temporary.write_text(render_template(stored))
        try:
            if overwrite:
                temporary.replace(path)
            else:
                try:
                    os.link(temporary, path)  # fails if the name exists, never half-written
                except FileExistsError:
                    raise TemplateExists(
                        f"a template named '{template.name}' already exists ({path}); choose another "
                        "name or overwrite it"
                    ) from None
        finally:
            temporary.unlink(missing_ok=True)
        return stored

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise TemplateNotFound(f"no template named '{name}' in {self.root}")
        path.unlink()

    def resolve(self, name: str, overrides: list[str] | None = None) -> AppConfig:
        """The template's config with `-o dotted.key=value` overrides applied, validated:
        what a launch from the template trains. Every problem is reported at once."""
        template = self.get(name)
        raw = copy.deepcopy(template.config)
        problems = apply_overrides(raw, overrides or [])
        return validate_model(AppConfig, raw, f"template '{name}'", problems)

    def _checked_family(self, template: Template) -> str:
        cfg = validate_config(copy.deepcopy(template.config), f"template '{template.name}'")
        family, params = family_and_params(cfg.model.backbone)
        if template.family is not None and template.family != family.name:
            raise ConfigError(
                [
                    f"family: the template says '{template.family}' but its backbone "
                    f"({family.variant_name(params)}) is of the '{family.name}' family"
                ],
                f"template '{template.name}'",
            )
        return family.name


def render_template(template: Template) -> str:
    """The file's text: the launch command as a comment, then name, description,
    family, created and the config as written."""
    body = {
        "name": template.name,
        "description": template.description,
        "family": template.family,
        "created": template.created.isoformat(),
        "config": template.config,
    }
    header = (
        f"# {LAUNCH_COMMAND.format(name=template.name)}\n"
        "# A ray-app template: `config` is an ordinary config (see configs/); edit, review and\n"
        "# version this file like one.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=4096)


def template_record(template: Template) -> dict[str, str]:
    """What a run keeps of the template that launched it: name, description and when
    the template was saved (a later edit of the template does not rewrite the run)."""
    return {"name": template.name, "description": template.description, "created": template.created.isoformat()}


def record_template(run: Run, template: Template) -> None:
    """Note in a run's metadata the template that launched it, before the run's stages
    start; the stages keep it."""
    run.root.mkdir(parents=True, exist_ok=True)
    run.update_metadata(template={**template_record(template), "launched": _now().isoformat()})
