"""Request and response models of the control plane's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, in a few words.")
    detail: Any = Field(description="Why, and how to fix it: a message, or every problem found.")


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(default=None, description="Name of a saved template to launch.")
    config: dict[str, Any] | None = Field(
        default=None, description="A whole config (what a YAML preset holds), instead of a template."
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="`dotted.key=value` overrides, as `-o` takes them, e.g. training.lr=0.001.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> LaunchRequest:
        if (self.template is None) == (self.config is None):
            raise ValueError("give exactly one of 'template' or 'config'")
        return self


class RerunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overrides: list[str] = Field(default_factory=list, description="Overrides on top of the run's own config.")


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


class ConfigRequest(BaseModel):
    """A config to act on: a whole config, or a saved template, plus overrides."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = Field(default=None, description="A whole config (what a YAML preset holds).")
    template: str | None = Field(default=None, description="Or the name of a saved template.")
    overrides: list[str] = Field(default_factory=list, description="`dotted.key=value` overrides, e.g. training.lr=0.001.")

    @model_validator(mode="after")
    def _one_source(self) -> ConfigRequest:
        if (self.template is None) == (self.config is None):
            raise ValueError("give exactly one of 'template' or 'config'")
        return self


class SaveTemplateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
