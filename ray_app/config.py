"""The application config: one pydantic model validated all at once.

`load_config(path, overrides)` reads a YAML preset, applies `-o dotted.key=value`
overrides and validates everything in one pass, so the user sees every problem with
its dotted path in a single ConfigError (exit 2) rather than one per attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from calibration.config import CalibrationConfig
from ray_app.dotted import get_dotted, set_dotted
from ray_app.errors import ConfigError, DataError, UserError
from trainers.config import ModelConfig, ScalingConfig, TrainingConfig
from trainers.families import family_and_params, format_value
from trainers.recipes import RecipeSituation, resolve_recipe
from trainers.schema import StrictModel, validation_problems

ModelT = TypeVar("ModelT", bound=BaseModel)

SPLIT_NAMES: tuple[str, ...] = ("train", "val_select", "val_calib", "val_test")
IMAGE_SOURCES = {"sklearn_digits", "image_folder"}
TEXT_SOURCES = {"csv", "jsonl"}


class SourceConfig(StrictModel):
    kind: Literal["sklearn_digits", "parquet", "image_folder", "csv", "jsonl"] = Field(
        default="sklearn_digits",
        description="sklearn_digits: the 8x8 digits that ship with scikit-learn (no "
        "download). parquet: image bytes or text + label columns. image_folder: "
        "root/<class>/<file>.png|jpg. csv / jsonl: a text column and a label column.",
    )
    path: str | None = Field(
        default=None,
        description="File, directory or URI of the data (all kinds but sklearn_digits).",
    )
    image_column: str | None = Field(
        default=None, description="Column of encoded image bytes (parquet)."
    )
    text_column: str | None = Field(
        default=None, description="Column of text (parquet, csv, jsonl; default 'text' for csv/jsonl)."
    )
    label_column: str = Field(default="label", description="Column holding the class label.")

    @model_validator(mode="after")
    def _columns_fit_kind(self) -> SourceConfig:
        if self.kind != "sklearn_digits" and not self.path:
            raise ValueError(f"data.source.path is required for kind '{self.kind}'")
        if self.kind == "parquet" and (self.image_column is None) == (self.text_column is None):
            raise ValueError("parquet sources need exactly one of image_column or text_column")
        if self.kind in TEXT_SOURCES and self.image_column is not None:
            raise ValueError(f"{self.kind} sources hold text: use text_column, not image_column")
        if self.kind in IMAGE_SOURCES and self.text_column is not None:
            raise ValueError(f"{self.kind} sources hold images: text_column does not apply")
        return self

    @property
    def modality(self) -> Literal["image", "text"]:
        if self.kind in IMAGE_SOURCES or (self.kind == "parquet" and self.image_column):
            return "image"
        return "text"

    @property
    def file_columns(self) -> tuple[str, str]:
        """(content column, label column) of a Parquet file holding this source's rows:
        the configured columns for parquet, else `image` / `text` (csv / jsonl: their
        text column) and the label column. A review export is written with these and
        read back with them, so it reads like the source itself."""
        if self.modality == "image":
            return self.image_column or "image", self.label_column
        return self.text_column or "text", self.label_column


def is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def check_local_path(path: str, what: str) -> None:
    """A local data path that is not there, as a DataError naming it (URIs are left to
    the reader)."""
    if is_local_path(path) and not Path(path.removeprefix("file://")).exists():
        raise DataError(
            f"data.source.path '{path}' does not exist ({what}); check the path, "
            "relative paths are resolved from the current directory"
        )


class SplitRatios(StrictModel):
    train: float = Field(default=0.6, gt=0.0, lt=1.0, description="Share used for training.")
    val_select: float = Field(
        default=0.15, gt=0.0, lt=1.0, description="Share for early stopping and model choice."
    )
    val_calib: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Share for calibration, thresholds, risk control."
    )
    val_test: float = Field(default=0.15, gt=0.0, lt=1.0, description="Share for final metrics only.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = sum(self.as_dict().values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1.0, got {total:.6g}")
        return self

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}


class SplitsConfig(StrictModel):
    ratios: SplitRatios = Field(default_factory=SplitRatios, description="Share of each split.")
    stratify: bool = Field(
        default=True, description="Keep each class's share equal across the four splits."
    )
    max_samples: int | None = Field(
        default=None,
        ge=4,
        description="Keep a deterministic, seeded subsample of this many rows (smoke runs).",
    )


class DataConfig(StrictModel):
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where the data is.")
    splits: SplitsConfig = Field(default_factory=SplitsConfig, description="How it is split.")
    reviewed: list[str] = Field(
        default_factory=list,
        description="Review exports (Parquet files written by `ray-app review export` or POST "
        "/api/v1/runs/{name}/review/export) whose labelled rows join the train split only. They "
        "were chosen by a model's uncertainty, so in val_select, val_calib or val_test they would "
        "bias model choice, calibration and the final metrics. Rows whose content is already in "
        "the source are left out (the source's split and label win); every label must be one of "
        "the source's classes. Local paths; the run records each file's sha256 and rows used.",
    )

    @field_validator("reviewed")
    @classmethod
    def _distinct_local_paths(cls, paths: list[str]) -> list[str]:
        remote = [p for p in paths if not is_local_path(p)]
        if remote:
            raise ValueError(f"review exports must be local files, not URIs: {remote}")
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"review exports listed more than once: {repeated}")
        return paths


class StorageConfig(StrictModel):
    root: str = Field(
        default="./runs",
        description="Directory holding runs/<name>/. On a multi-node cluster it must be "
        "shared storage (NFS) that every node sees at the same path.",
    )


class RayInitConfig(StrictModel):
    address: str | None = Field(
        default=None,
        description="Ray cluster to connect to. Null: RAY_ADDRESS if set (as under "
        "`ray job submit`), else a local Ray started in-process.",
    )
    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="Logical CPUs of the local Ray (default: enough for the workers "
        "plus one for Ray Data, at least the machine's cores).",
    )


class ReferenceConfig(StrictModel):
    enabled: bool = Field(
        default=True,
        description="Fit a linear reference model (scikit-learn logistic regression: TF-IDF "
        "for text, raw pixels for images) on train and report its val_test accuracy next "
        "to the run's.",
    )
    c_values: list[float] = Field(
        default=[0.1, 1.0, 10.0],
        min_length=1,
        description="Inverse regularisation strengths C tried; the one with the best "
        "val_select accuracy is kept (val_test never chooses).",
    )
    max_train_rows: int = Field(
        default=20_000,
        ge=10,
        description="Fit on at most this many train rows (a seeded sample beyond that): a "
        "reference, not a second training run.",
    )
    image_side: int = Field(
        default=32,
        ge=4,
        description="Images are resized to at most this side (never up) before their pixels "
        "become features, so a 224-pixel backbone does not give 150,000 features.",
    )

    @field_validator("c_values")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(c <= 0 for c in values):
            raise ValueError("C values must be > 0")
        return values


class InsightsConfig(StrictModel):
    enabled: bool = Field(
        default=True,
        description="Compute the run's insights after evaluation: feature map of val_test, "
        "storyboard, reference model.",
    )
    max_points: int = Field(
        default=5000,
        ge=10,
        description="Most val_test rows on the feature map; beyond that a seeded sample "
        "(by row id, so the same rows for the same seed).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the map's row sample and of t-SNE.")
    examples_per_category: int = Field(
        default=6, ge=1, le=100, description="Examples the storyboard shows per outcome."
    )
    confused_pairs: int = Field(
        default=5, ge=1, le=100, description="Most confused class pairs the storyboard lists."
    )
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="The linear reference model.")


class BudgetConfig(StrictModel):
    benchmark_steps: int = Field(
        default=5,
        ge=1,
        le=200,
        description="Training steps timed by the compute budget's micro-benchmark on this "
        "machine (the median step time, times the steps of an epoch, is the estimate).",
    )
    warmup_steps: int = Field(
        default=2,
        ge=0,
        le=50,
        description="Steps run before the timed ones (allocations, kernel choice), not timed.",
    )
    max_probe_seconds: float = Field(
        default=5.0,
        gt=0.0,
        description="Longest the CPU micro-benchmark may take: a model whose steps would "
        "take longer is timed on a batch of 4 and the step time scaled to the batch size, "
        "so sizing a run never stalls it.",
    )
    gpu_tflops: float = Field(
        default=300.0,
        gt=0.0,
        description="Sustained TFLOP/s of one GPU, for the epoch time of a GPU config sized "
        "on a machine without a GPU (estimated from the FLOP count, and said so). An H200's "
        "dense bf16 peak is about 790 TFLOP/s; training steps sustain roughly 30-50% of it.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where budgets are cached (default <storage.root>/.cache/budget): "
        "asking again for the same data, preprocessing and model costs nothing.",
    )


class AppConfig(StrictModel):
    seed: int = Field(default=0, ge=0, description="Seed for splits, initialisation and shuffling.")
    name_pattern: str = Field(
        default="{dataset}_{family}_{mode}_lr{training.lr}_s{seed}",
        description="Run directory name. Placeholders: {dataset}, {family} (backbone "
        "model_type), {backbone} (the model family's variant name, e.g. vit-h64-l4), "
        "{mode}, {seed}, or any dotted config path such as {training.lr}.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and splits.")
    model: ModelConfig = Field(description="Backbone, head and preprocessing.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="The training loop.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Ray Train workers.")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Temperature, decision rules and the policy."
    )
    insights: InsightsConfig = Field(
        default_factory=InsightsConfig, description="What the run shows after evaluation (feature map, storyboard, reference)."
    )
    budget: BudgetConfig = Field(
        default_factory=BudgetConfig, description="The compute budget estimated before training."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where runs live.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="How to reach Ray.")

    @model_validator(mode="after")
    def _training_recipe(self) -> AppConfig:
        # Written to __dict__: an assignment would validate this whole model again.
        self.__dict__["training"] = resolve_recipe(self.training, self.recipe_situation())
        return self

    def recipe_situation(self) -> RecipeSituation:
        backbone = self.model.backbone
        side = self.model.preprocessing.image_size or (backbone.config or {}).get("image_size")
        return RecipeSituation(
            pretrained=backbone.id is not None, modality=self.data.source.modality, mode=self.training.mode,
            frozen_backbone=self.model.freeze_backbone, image_side=int(side) if side else None,
            hflip_view="hflip" in self.model.views,
        )

    @model_validator(mode="after")
    def _cross_section_rules(self) -> AppConfig:
        problems: list[str] = []
        augment = self.training.augment
        if self.data.source.modality == "text" and augment.enabled:
            problems.append("training.augment transforms images, but the data is text: remove training.augment")
        if augment.hflip and "hflip" not in self.model.views:
            problems.append(
                "training.augment.hflip mirrors training images, but model.views has no hflip: mirror only "
                "classes that keep their meaning mirrored, and then add hflip to model.views too"
            )
        if self.data.source.modality == "text" and self.model.backbone.config is not None:
            if self.model.preprocessing.tokenizer is None:
                problems.append(
                    "a text dataset on a backbone built from model.backbone.config needs "
                    "model.preprocessing.tokenizer (a local tokenizer directory)"
                )
        if self.data.source.modality == "text" and self.model.views != ["identity"]:
            problems.append(
                f"model.views {self.model.views} transform images, but data.source "
                f"(kind {self.data.source.kind}) holds text: remove model.views or set it to [identity]"
            )
        if self.training.mode == "peft" and self.model.freeze_backbone:
            problems.append(
                "model.freeze_backbone trains the head alone and training.mode: peft trains "
                "adapters on the backbone: choose one"
            )
        unknown = [f for f in name_placeholders(self.name_pattern) if not _placeholder_ok(self, f)]
        if unknown:
            problems.append(
                f"name_pattern uses unknown placeholder(s) {unknown}; use "
                f"{sorted(DERIVED_PLACEHOLDERS)} or a dotted config path like training.lr"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved_dict(self) -> dict[str, Any]:
        """The full config with every default filled in: what `config.yaml` records."""
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the given top-level sections (all when none): decides whether
        a stage's earlier output still matches the config."""
        full = self.resolved_dict()
        chosen = {k: full[k] for k in sections} if sections else full
        blob = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- run name pattern ---------------------------------------------------------------

DERIVED_PLACEHOLDERS = {"dataset", "family", "backbone", "mode", "seed"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def name_placeholders(pattern: str) -> list[str]:
    return _PLACEHOLDER.findall(pattern)


def _placeholder_ok(cfg: AppConfig, field: str) -> bool:
    if field in DERIVED_PLACEHOLDERS:
        return True
    try:
        get_dotted(cfg.model_dump(mode="json"), field)
    except KeyError:
        return False
    return True


def backbone_names(cfg: AppConfig) -> tuple[str, str]:
    """(family, backbone) for the name pattern, both from the backbone's model family:
    its architecture and its variant name, e.g. ('vit', 'vit-h64-l4'), or for a local
    MiniLM directory ('bert', 'all-MiniLM-L6-v2')."""
    family, params = family_and_params(cfg.model.backbone)
    return family.architecture(params), family.variant_name(params)


def dataset_name(cfg: AppConfig) -> str:
    """The data's short name in run names: the source kind for the built-in digits,
    else the file or directory name without its suffix."""
    if cfg.data.source.kind == "sklearn_digits":
        return cfg.data.source.kind
    return Path(str(cfg.data.source.path).rstrip("/")).stem


def check_paths_exist(cfg: AppConfig) -> None:
    """The local paths a config names, checked before anything heavy is imported or
    started, so a wrong path is answered at once: the data, a tokenizer directory, and a
    backbone given as an explicit local path (a bare `org/name` may be a hub id)."""
    if cfg.data.source.path is not None:
        check_local_path(cfg.data.source.path, f"the {cfg.data.source.kind} data")
    missing = [p for p in cfg.data.reviewed if not Path(p.removeprefix("file://")).is_file()]
    if missing:
        raise DataError(
            f"data.reviewed: no such review export file(s) {missing}; give the paths that `ray-app review "
            "export` printed (relative paths are resolved from the current directory)"
        )
    tokenizer = cfg.model.preprocessing.tokenizer
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise UserError(
            f"model.preprocessing.tokenizer '{tokenizer}' is not a directory (relative paths are "
            "resolved from the current directory)"
        )
    backbone = cfg.model.backbone.id
    if backbone is not None and backbone.startswith(("/", "./", "../", "~")) and not Path(backbone).expanduser().is_dir():
        raise UserError(
            f"model.backbone.id '{backbone}' is not a directory; give the local directory of a "
            "Hugging Face model (config.json and weights)"
        )


def run_name_parts(cfg: AppConfig) -> dict[str, Any]:
    """The derived placeholders of `name_pattern`: dataset, family, backbone, mode, seed."""
    family, backbone = backbone_names(cfg)
    return {
        "dataset": dataset_name(cfg),
        "family": family,
        "backbone": backbone,
        "mode": cfg.training.mode,
        "seed": cfg.seed,
    }


def run_name(cfg: AppConfig) -> str:
    derived = run_name_parts(cfg)
    full = cfg.model_dump(mode="json")

    def substitute(match: re.Match[str]) -> str:
        field = match.group(1)
        value = derived[field] if field in derived else get_dotted(full, field)
        return format_value(value)

    name = _PLACEHOLDER.sub(substitute, cfg.name_pattern)
    # Run names become directory names: keep them portable.
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


# --- loading ------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> tuple[list[tuple[list[str], Any]], list[str]]:
    """`a.b=value` strings -> (path, YAML-parsed value) pairs, plus syntax problems."""
    parsed: list[tuple[list[str], Any]] = []
    problems: list[str] = []
    for raw in overrides:
        key, sep, value_text = raw.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                f"override '{raw}': expected dotted.key=value, e.g. -o training.epochs=2"
            )
            continue
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as exc:
            problems.append(
                f"override '{raw}': value is not valid YAML ({exc.problem}); quote "
                f"strings that look like YAML, e.g. {key}='{value_text}'"
            )
            continue
        parsed.append((key.split("."), value))
    return parsed, problems


def validate_model(
    model: type[ModelT], raw: dict[str, Any], source: str, problems: list[str] | None = None
) -> ModelT:
    """Validate `raw` as `model`. Every problem is reported at once with its dotted
    path, together with `problems` found before validation (e.g. bad overrides)."""
    found = list(problems or [])
    try:
        validated = model.model_validate(raw)
    except ValidationError as exc:
        found += validation_problems(exc, model)
    if found:
        raise ConfigError(found, source)
    return validated


def validate_config(raw: dict[str, Any], source: str = "config") -> AppConfig:
    return validate_model(AppConfig, raw, source)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or a ConfigError saying why not."""
    if not path.is_file():
        raise ConfigError([f"config file '{path}' does not exist"], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of sections"], str(path))
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """Apply `-o dotted.key=value` overrides to `raw` in place; returns the problems."""
    parsed, problems = parse_overrides(overrides)
    for key_path, value in parsed:
        problem = set_dotted(raw, ".".join(key_path), value)
        if problem:
            problems.append(problem)
    return problems


def load_config(path: str | Path, overrides: list[str] | None = None) -> AppConfig:
    path = Path(path)
    raw = read_yaml_mapping(path)
    problems = apply_overrides(raw, overrides or [])
    return validate_model(AppConfig, raw, str(path), problems)
