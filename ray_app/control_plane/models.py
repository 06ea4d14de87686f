"""Request and response models of the control plane's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_app.existing_runs import OnExists
from trainers.schema import StrictModel

ON_EXISTS_DESCRIPTION = (
    "When a run of the config's name exists: refuse (409 with the run's link), new (train under the next free "
    "name, <name>-2), resume (continue it with this config, keeping the stages still valid for it), replace "
    "(delete it and train afresh). A finished run is never trained again unasked."
)


class LaunchRequest(StrictModel):
    template: str | None = Field(default=None, description="Name of a saved template to launch.")
    config: dict[str, Any] | None = Field(
        default=None, description="A whole config (what a YAML preset holds), instead of a template."
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="`dotted.key=value` overrides, as `-o` takes them, e.g. training.lr=0.001.",
    )
    on_exists: OnExists = Field(default="refuse", description=ON_EXISTS_DESCRIPTION)

    @model_validator(mode="after")
    def _one_source(self) -> LaunchRequest:
        if (self.template is None) == (self.config is None):
            raise ValueError("give exactly one of 'template' or 'config'")
        return self


class RerunRequest(StrictModel):
    overrides: list[str] = Field(default_factory=list, description="Overrides on top of the run's own config.")
    on_exists: OnExists = Field(default="refuse", description=ON_EXISTS_DESCRIPTION)
    with_reviewed: bool = Field(
        default=False,
        description="Also train on the labels people gave the run's served answers: its labelled review items are "
        "exported (as POST /runs/{name}/review/export does) and added to data.reviewed, after any export the run "
        "already trained on. 409 when none is labelled.",
    )


class LaunchResponse(BaseModel):
    run: str = Field(description="The run the job trains (its directory under the runs root).")
    submission_id: str = Field(description="The Ray job's submission id.")
    status: str = Field(description="The run's status right after submission: pending.")
    template: str | None = Field(default=None, description="The template it was launched from, if any.")
    family: str | None = Field(default=None, description="The model family of its backbone.")


class RunSummary(BaseModel):
    name: str = Field(description="Run name.")
    created: str | None = Field(default=None, description="When the run directory was created (UTC, ISO 8601).")
    status: str = Field(description="pending, running, succeeded, failed, stopped or incomplete.")
    message: str | None = Field(default=None, description="Why it failed or stopped.")
    family: str | None = Field(default=None, description="Model family (its registry name, as /api/v1/families lists them).")
    backbone: str | None = Field(default=None, description="Backbone variant, e.g. vit-h64-l4.")
    dataset: str | None = Field(default=None, description="Dataset name.")
    mode: str | None = Field(default=None, description="Training mode: baseline or peft.")
    template: str | None = Field(default=None, description="Template it was launched from.")
    best_epoch: int | None = Field(default=None, description="Selected epoch (0-based).")
    epochs_run: int | None = Field(default=None, description="Epochs trained.")
    best_accuracy: float | None = Field(default=None, description="val_select accuracy at the selected epoch.")
    best_macro_f1: float | None = Field(default=None, description="val_select macro-F1 at the selected epoch.")
    best_loss: float | None = Field(default=None, description="val_select loss at the selected epoch.")
    val_test_accuracy: float | None = Field(default=None, description="Final accuracy on val_test.")
    coverage: float | None = Field(default=None, description="Share of val_test accepted under the policy.")
    model_version: str | None = Field(default=None, description="The exported bundle's model version.")
    last_job: str | None = Field(default=None, description="Submission id of the latest job that ran it.")


class RunList(BaseModel):
    total: int = Field(description="Runs matching the filters.")
    limit: int = Field(description="Page size.")
    offset: int = Field(description="Rows skipped.")
    runs: list[RunSummary] = Field(description="This page, in the requested order.")


SortKey = Literal[
    "created", "name", "val_select/accuracy", "val_select/macro_f1", "val_select/loss", "val_test/accuracy", "coverage"
]


class ConfigRequest(StrictModel):
    """A config to act on: a whole config, or a saved template, plus overrides."""

    config: dict[str, Any] | None = Field(default=None, description="A whole config (what a YAML preset holds).")
    template: str | None = Field(default=None, description="Or the name of a saved template.")
    overrides: list[str] = Field(default_factory=list, description="`dotted.key=value` overrides, e.g. training.lr=0.001.")

    @model_validator(mode="after")
    def _one_source(self) -> ConfigRequest:
        if (self.template is None) == (self.config is None):
            raise ValueError("give exactly one of 'template' or 'config'")
        return self


class SaveTemplateRequest(StrictModel):
    name: str = Field(description="Unique name: letters, digits, '.', '_' and '-' (e.g. from /templates/suggest).")
    description: str = Field(default="", max_length=2000, description="What the template trains, for a person choosing one.")
    config: dict[str, Any] = Field(description="The config to keep; validated in full before it is saved.")
    overrides: list[str] = Field(default_factory=list, description="Overrides applied to `config` before it is saved.")
    overwrite: bool = Field(default=False, description="Replace a template of the same name (else 409).")


class TemplateSummary(BaseModel):
    name: str = Field(description="Template name (its file name without .yaml).")
    description: str = Field(description="What it trains.")
    family: str | None = Field(description="The backbone's model family.")
    created: str = Field(description="When it was saved (UTC, ISO 8601).")
    runs: int = Field(default=0, description="Runs launched from it (from the index).")


class FamilySummary(BaseModel):
    name: str = Field(description="Registry key, e.g. vit.")
    title: str = Field(description="Human name.")
    modality: str = Field(description="image, text or any.")
    description: str = Field(description="What the family builds.")
    model_type: str | None = Field(description="The Hugging Face model_type of its config dicts.")
    variant_pattern: str = Field(description="How variants are named from their parameters.")
    variants: int = Field(description="Runs of this family under the runs root (from the index).")


class FamilyVariantRow(BaseModel):
    variant: str | None = Field(description="The variant name, e.g. vit-h64-l4.")
    runs: list[RunSummary] = Field(description="Its runs, newest first.")
    best_accuracy: float | None = Field(description="The best val_select accuracy among them.")


# --- responses of the remaining JSON routes ------------------------------------------------
#
# Each model declares every key its route returns, in the order the route (or the file it
# reads) has them, so the JSON is what the route built: a response model drops keys it does
# not declare, and serializes declared fields first, in declaration order. Documents the
# pipeline writes with sorted keys (storyboard, insights summary, calibration views, budget)
# declare their fields alphabetically for that reason. Keys a route sometimes leaves out are
# optional with a default, and their routes set `response_model_exclude_unset`, so a key
# that was not returned stays absent rather than coming back as null. Open-ended documents
# (a whole config, a budget, a meaning map's method-specific keys) keep keys they do not
# declare (`extra="allow"`).


class RayStatus(BaseModel):
    address: str | None = Field(description="The Ray job server's address; None when the server runs without Ray jobs.")
    ready: bool = Field(description="Whether the job server answered, so launches can be submitted.")
    error: str | None = Field(description="Why it is not ready, when it is not.")


class HealthStatus(BaseModel):
    status: str = Field(description="Always ok: the server answered.")
    version: str = Field(description="The ray-app version serving.")
    runs_root: str = Field(description="The directory the runs live under.")
    ray: RayStatus = Field(description="Whether launches can reach a Ray job server.")


class IndexRebuilt(BaseModel):
    runs: int = Field(description="Rows the rebuild read into the run index.")


class ConfigDocument(BaseModel):
    """A config as a mapping of its top-level sections (what a YAML preset or a run's
    config.yaml holds): as written, so any section may be absent; keys of a newer config
    format are kept."""

    model_config = ConfigDict(extra="allow")

    seed: int | None = Field(default=None, description="The run's seed (splits, initialisation, sampling).")
    name_pattern: str | None = Field(default=None, description="How the run is named from the config's values.")
    data: dict[str, Any] | None = Field(default=None, description="The `data` section: source and splits.")
    model: dict[str, Any] | None = Field(
        default=None, description="The `model` section: backbone, head, pooling, preprocessing, views."
    )
    training: dict[str, Any] | None = Field(
        default=None, description="The `training` section: mode, epochs, batch size, optimiser, early stopping."
    )
    scaling: dict[str, Any] | None = Field(default=None, description="The `scaling` section: workers, GPUs, CPUs.")
    calibration: dict[str, Any] | None = Field(
        default=None, description="The `calibration` section: temperature, threshold, guardrail, risk control, policy."
    )
    insights: dict[str, Any] | None = Field(default=None, description="The `insights` section: map, storyboard, reference.")
    budget: dict[str, Any] | None = Field(default=None, description="The `budget` section: the micro-benchmark's steps.")
    storage: dict[str, Any] | None = Field(default=None, description="The `storage` section: the runs root.")
    ray: dict[str, Any] | None = Field(default=None, description="The `ray` section: the cluster to use.")


class Preset(BaseModel):
    name: str = Field(description="The preset's file name without .yaml, e.g. digits.")
    command: str = Field(description="The command the preset's first line says runs it.")


class ExistingRun(BaseModel):
    run: str = Field(description="The run of that name.")
    status: str = Field(description="Its status: pending, running, succeeded, failed, stopped or incomplete.")
    same_config: bool = Field(description="Whether it recorded exactly this config (apart from where it is stored).")
    link: str = Field(description="Its dashboard page.")
    next_free: str = Field(description="The name `on_exists: new` would train under.")


class ResolvedConfig(BaseModel):
    run: str = Field(description="The run name the config gives.")
    config: ConfigDocument = Field(description="The config, validated, with every default filled in.")
    existing: ExistingRun | None = Field(
        default=None, description="The run a launch would meet under that name (null: none); see `on_exists`."
    )


class FamilyBackbone(BaseModel):
    backbone: dict[str, Any] = Field(description="The `model.backbone` config section for the parameters.")
    variant: str = Field(description="The variant name they give, e.g. vit-h64-l4.")
    facts: list[str] = Field(description="Short facts for a person, e.g. 'Hidden: 64'.")


# --- runs ------------------------------------------------------------------------------------


class ConfigDifference(BaseModel):
    key: str = Field(description="A dotted config key whose value differs between the runs, e.g. training.lr.")
    values: dict[str, Any] = Field(description="Its value in each run, by run name (null where a run does not set it).")


class RunComparison(BaseModel):
    runs: list[str] = Field(description="The runs compared, in the order asked for.")
    config_diff: list[ConfigDifference] = Field(description="Every config key whose value differs, sorted by key.")
    results: dict[str, RunSummary] = Field(description="Each run's index row, by run name.")
    curves: dict[str, list[dict[str, Any]]] = Field(
        description="Each run's epoch metrics (epoch, train/loss, val_select/loss, val_select/accuracy, "
        "val_select/macro_f1, lr, where recorded), by run name."
    )


class TrainingProgress(BaseModel):
    """Rank 0's progress.json: where training is inside the current epoch. Empty before
    training has started."""

    epoch: int | None = Field(default=None, description="The current epoch (0-based).")
    epochs: int | None = Field(default=None, description="Epochs the run trains at most.")
    step: int | None = Field(default=None, description="Steps done in this epoch.")
    steps: int | None = Field(default=None, description="Steps in an epoch.")
    loss: float | None = Field(default=None, description="The latest step's training loss (null at an epoch's start).")
    epoch_started: float | None = Field(default=None, description="When this epoch started (Unix time, seconds).")
    updated: float | None = Field(default=None, description="When the file was written (Unix time, seconds).")


class RunCalibration(BaseModel):
    temperature: dict[str, Any] | None = Field(
        description="Temperature scaling: the fitted temperature and the metrics before and after (temperature.json)."
    )
    guardrail: dict[str, Any] | None = Field(
        description="The guardrail sweep's chosen band and its scores (guardrail.json, without every trial's results)."
    )
    threshold: dict[str, Any] | None = Field(
        description="The confidence threshold chosen and its scores (thresholds.json, without the candidates)."
    )
    risk_control: dict[str, Any] | None = Field(description="The risk-controlled threshold and its certificate.")


class RunBundle(BaseModel):
    path: str = Field(description="The exported serving bundle's directory.")
    model_version: str | None = Field(description="The bundle's model version.")
    serve_command: str = Field(description="The command that serves it.")


class JobRecord(BaseModel):
    submission_id: str = Field(description="The Ray job's submission id.")
    run: str = Field(description="The run the job trains.")
    template: str | None = Field(description="The template it was launched from, if any.")
    family: str | None = Field(description="The model family of its backbone.")
    created: float = Field(description="When it was submitted (Unix time, seconds).")
    state: str = Field(description="pending, running, succeeded, failed or stopped.")
    message: str | None = Field(description="What the job server said about it (why it failed or stopped).")
    config_path: str | None = Field(description="The config file the job was submitted with.")


class RunLogFile(BaseModel):
    path: str = Field(description="The run's log file.")
    bytes: int = Field(description="Its size (0 when there is none yet); a log stream can start from here.")


class RunDetail(RunSummary):
    """One run: its index row, then what its files say."""

    path: str = Field(description="The run's directory.")
    config: ConfigDocument = Field(
        description="The run's config.yaml (or the config its job was submitted with); empty when there is none yet."
    )
    launch: dict[str, Any] | None = Field(description="How it was launched: submission id, template, time.")
    template_record: dict[str, Any] | None = Field(description="The template it was launched from, as it was then.")
    stages: dict[str, Any] = Field(description="Each stage's record from metadata.json (status, times, results), by stage.")
    stage_order: list[str] = Field(description="The pipeline's stages, in the order they run.")
    best: dict[str, Any] | None = Field(description="The val_select metrics of the selected epoch.")
    progress: TrainingProgress | None = Field(description="Where training is inside the current epoch, when it has started.")
    calibration: RunCalibration = Field(description="What calibration fitted, by part (null where it has not run).")
    policy: dict[str, Any] | None = Field(
        description="The decision policy (policy.json): rule, temperature and its cut points."
    )
    evaluation: dict[str, Any] | None = Field(description="The metrics on val_test (evaluation), when evaluated.")
    bundle: RunBundle | None = Field(description="The exported serving bundle, when there is one.")
    job: JobRecord | None = Field(description="The latest job this server launched for it.")
    logs: RunLogFile = Field(description="The run's log file.")


class RunStopped(BaseModel):
    run: str = Field(description="The run whose job is being stopped.")
    submission_id: str = Field(description="The Ray job asked to stop.")
    status: str = Field(description="Always stopping: the job ends shortly; its run then reads stopped.")


class RunMetrics(BaseModel):
    run: str = Field(description="Run name.")
    rows: list[dict[str, Any]] = Field(
        description="One row per epoch from metrics.jsonl: `epoch` and the metrics asked for (e.g. train/loss, "
        "val_select/accuracy, lr)."
    )


class RunLogTail(BaseModel):
    run: str = Field(description="Run name.")
    path: str = Field(description="The run's log file.")
    lines: list[str] = Field(description="Its last lines, oldest first.")
    offset: int = Field(description="The log's size in bytes: where a log stream continues from.")
