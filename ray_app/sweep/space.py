"""The search space of a sweep (`--space`): config fields by dotted path, each with a
search dimension, the number of trials and the scheduler; checked against the config
schema (every key, every value a dimension can produce) before Ray starts."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator

from ray_app.config import AppConfig, name_placeholders, read_yaml_mapping, validate_model
from ray_app.dotted import set_dotted
from ray_app.errors import ConfigError
from trainers.schema import StrictModel, describe_error

# Sections a sweep may vary. The backbone and preprocessing are left out: they change
# the inputs every trial shares (sweep each backbone separately); data and seed change
# the splits, and trials are only comparable on the same val_select rows.
SWEEPABLE_SECTIONS = ("training", "model")
FIXED_SUBSECTIONS = ("model.backbone", "model.preprocessing")
# What other tools call some fields, for "did you mean" (field name: ours).
COMMON_NAMES = {
    "learning_rate": "lr", "wd": "weight_decay", "num_epochs": "epochs", "rank": "r",
    "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
}
# Name-pattern placeholders that already show a config field ({mode} is training.mode).
DERIVED_ALIASES = {"training.mode": "mode"}
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved by a trial's driver function


class Dimension(StrictModel):
    """One searched config field: exactly one of the keys below."""

    choice: list[Any] | None = Field(default=None, description="Sample one of these values per trial.")
    grid: list[Any] | None = Field(
        default=None,
        description="Try every value (Tune grid search); grids over several keys multiply.",
    )
    uniform: tuple[float, float] | None = Field(default=None, description="[low, high]: a float uniform in between.")
    loguniform: tuple[float, float] | None = Field(
        default=None, description="[low, high], low > 0: a float uniform in log space (learning rates)."
    )
    randint: tuple[int, int] | None = Field(default=None, description="[low, high]: an integer, both ends included.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Dimension:
        given = [k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of choice, grid, uniform, loguniform, randint (got {given or 'none'})"
            )
        kind = given[0]
        if kind in ("choice", "grid") and not getattr(self, kind):
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            low, high = getattr(self, kind)
            if not low < high and not (kind == "randint" and low == high):
                raise ValueError(f"{kind}: low must be below high (got [{low}, {high}])")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low must be > 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values the config must accept: every listed value, or both ends of a range."""
        value = getattr(self, self.kind)
        return list(value)

    def to_tune(self) -> Any:
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        assert self.randint is not None
        return tune.randint(self.randint[0], self.randint[1] + 1)  # Tune's high is exclusive


class SchedulerConfig(StrictModel):
    kind: str = Field(
        default="asha",
        pattern="^(asha|fifo)$",
        description="asha: stop trials whose val_select metric trails the others at each "
        "rung (grace_period, then x reduction_factor epochs); fifo: every trial runs to "
        "the end.",
    )
    grace_period: int = Field(default=1, ge=1, description="Epochs every trial gets before ASHA may stop it.")
    reduction_factor: float = Field(
        default=2.0, gt=1.0, description="ASHA keeps the top 1/reduction_factor of trials at each rung."
    )


class SweepConfig(StrictModel):
    space: dict[str, Dimension] = Field(
        description="Dotted config path -> search dimension, e.g. training.lr: {loguniform: [1e-4, 1e-2]}. "
        f"Fields under {', '.join(SWEEPABLE_SECTIONS)} only (not {', '.join(FIXED_SUBSECTIONS)})."
    )
    num_samples: int = Field(
        default=4,
        ge=1,
        description="Trials sampled from the space; with grid keys, each grid point is run "
        "this many times (with the other keys sampled anew).",
    )
    metric: str | None = Field(
        default=None,
        pattern="^(accuracy|macro_f1|loss)$",
        description="val_select metric that ranks trials (loss is minimised). Default: the "
        "config's training.early_stopping.metric, which also picks each trial's epoch.",
    )
    max_concurrent_trials: int | None = Field(
        default=None,
        ge=1,
        description="Trials running at once. Default: as many as the cluster's CPUs hold "
        "(each trial needs scaling.num_workers x cpus_per_worker), so trials never wait "
        "on each other's CPUs halfway through.",
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Early stopping of trials.")
    search_seed: int = Field(default=0, ge=0, description="Seed of the random sampling (same seed, same trials).")

    @model_validator(mode="after")
    def _non_empty(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space is empty: name at least one config field to search")
        return self


# --- checking the space against the config schema ------------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    members = get_args(annotation) or (annotation,)
    return next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)


def sweepable_fields(model: type[BaseModel] = AppConfig, prefix: str = "") -> list[str]:
    """Every leaf field a sweep may set, as dotted paths."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if not prefix and name not in SWEEPABLE_SECTIONS:
            continue
        if path in FIXED_SUBSECTIONS:
            continue
        section = _section_model(field.annotation)
        if section is not None:
            paths += sweepable_fields(section, f"{path}.")
        else:
            paths.append(path)
    return paths


def _key_problem(key: str, allowed: list[str]) -> str | None:
    if key in allowed:
        return None
    shared_by_all_trials = set(AppConfig.model_fields) - set(SWEEPABLE_SECTIONS)
    if any(key == s or key.startswith(f"{s}.") for s in FIXED_SUBSECTIONS) or key.split(".")[0] in shared_by_all_trials:
        return (
            f"space key '{key}': a sweep varies {', '.join(SWEEPABLE_SECTIONS)} fields only "
            f"({', '.join(FIXED_SUBSECTIONS)}, data and seed are shared by every trial); set it "
            "in the config instead"
        )
    children = [p for p in allowed if p.startswith(f"{key}.")]
    if children:
        return f"space key '{key}' is a section; search its fields instead: {', '.join(children)}"
    section, _, leaf = key.rpartition(".")
    siblings = {p.rpartition(".")[2]: p for p in allowed if p.rpartition(".")[0] == section}
    named = COMMON_NAMES.get(leaf)
    close = [siblings[named]] if named in siblings else [
        siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    ] or difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"searchable fields: {', '.join(allowed)}"
    return f"space key '{key}' is not a config field; {hint}"


def trial_config(base_raw: dict[str, Any], values: dict[str, Any], name_pattern: str) -> dict[str, Any]:
    """The raw config of one trial: the base with the sampled values and the sweep's
    name pattern."""
    raw = copy.deepcopy(base_raw)
    for key, value in values.items():
        set_dotted(raw, key, value)
    raw["name_pattern"] = name_pattern
    return raw


def check_space(base_raw: dict[str, Any], sweep: SweepConfig, source: str) -> None:
    """Every key a sweepable config field, and every value each dimension can produce
    valid there (with the other keys at their first value). All problems at once."""
    allowed = sweepable_fields()
    problems = [p for key in sweep.space if (p := _key_problem(key, allowed))]
    if problems:
        raise ConfigError(problems, source)
    first = {key: dim.probe_values()[0] for key, dim in sweep.space.items()}
    for key, dim in sweep.space.items():
        for value in dim.probe_values():
            raw = trial_config(base_raw, {**first, key: value}, base_raw.get("name_pattern", "{mode}"))
            try:
                AppConfig.model_validate(raw)
            except ValidationError as exc:
                problems += [f"space {key}={value!r}: {describe_error(e, AppConfig)}" for e in exc.errors()]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)


def load_sweep(path: str | Path, base_raw: dict[str, Any]) -> SweepConfig:
    raw = read_yaml_mapping(Path(path))
    sweep = validate_model(SweepConfig, raw, str(path))
    check_space(base_raw, sweep, str(path))
    return sweep


def sweep_name_pattern(base_pattern: str, keys: list[str]) -> str:
    """The config's name pattern plus every swept key it does not show, so each trial
    gets its own run: `smoke_{family}_{mode}_s{seed}` + `_lr{training.lr}`."""
    shown = set(name_placeholders(base_pattern))
    leaves = [k.split(".")[-1] for k in keys]
    extra = []
    for key, leaf in zip(keys, leaves, strict=True):
        if key in shown or DERIVED_ALIASES.get(key) in shown:
            continue
        label = leaf if leaves.count(leaf) == 1 else key.replace(".", "-")
        extra.append(f"_{label}{{{key}}}")
    return base_pattern + "".join(extra)
