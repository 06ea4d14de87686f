"""The pipeline's stages, each one record: what it is called, which config sections its
output depends on, the function that runs it, and the line that sums it up.

    splits -> train -> calibrate -> evaluate -> insights -> export

`run_pipeline` is a loop over the records; the console (one line per stage), the CLI
(one command per stage) and the control plane (a run's status and timeline) read the
same records. A stage runs with a `StageContext` (`ray_app.stages.context`): the config,
the run, and what is derived from them once per command.

Each stage's work lives in its own module, `ray_app/stages/<name>.py`, imported when the
stage runs: the records themselves cost nothing to import, so listing runs or drawing a
timeline never loads torch or Ray.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ray_app.config import SPLIT_NAMES

if TYPE_CHECKING:
    from ray_app.config import AppConfig
    from ray_app.stages.context import StageContext


@dataclass(frozen=True)
class Stage:
    name: str
    # The config sections the stage's output depends on: a stage complete for the same
    # fingerprint of these is still valid (changing calibration.policy does not
    # retrain; changing insights.* recomputes the insights only).
    sections: tuple[str, ...]
    # "module:function" taking a StageContext and returning the stage's metadata.
    runner: str
    # The one line that sums up a finished stage, from what it recorded; `reports` are
    # the keys it needs (a stage that recorded nothing says nothing).
    summarize: Callable[[dict[str, Any]], str]
    reports: tuple[str, ...] = ()
    # What the console shows while it runs: a ticking clock, or training's epochs.
    progress: Literal["ticker", "epochs"] = "ticker"
    # A line shown before the stage starts, for stages that print lines of their own.
    heading: Callable[[AppConfig], str] | None = None

    def fingerprint(self, cfg: AppConfig) -> str:
        """The config sections' fingerprint; with review exports in `data.reviewed`, their
        content too: an export rewritten in place still makes the splits (and so every
        later stage) run again."""
        sections = cfg.fingerprint(*self.sections)
        if "data" not in self.sections or not cfg.data.reviewed:
            return sections
        from ray_app.splits import file_fingerprint

        contents = ",".join(file_fingerprint(path) for path in cfg.data.reviewed)
        return hashlib.sha256(f"{sections}:{contents}".encode()).hexdigest()[:16]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)(ctx)

    def summary(self, info: dict[str, Any]) -> str:
        if not info.get("disabled") and any(key not in info for key in self.reports):
            return ""
        return self.summarize(info)


# --- what each stage's line says ----------------------------------------------------------


def _splits_line(info: dict[str, Any]) -> str:
    counts = info["counts"]
    return f"{sum(counts.values())} rows: " + ", ".join(f"{k} {counts[k]}" for k in SPLIT_NAMES if k in counts)


def _train_line(info: dict[str, Any]) -> str:
    best = info.get("best", {})
    shown = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in best.items() if not k.endswith("loss"))
    resumed = f" · resumed at epoch(s) {info['resumed_at']}" if info.get("resumed_at") else ""
    return f"{info['epochs_run']} epoch(s), best epoch {info['best_epoch'] + 1} (val_select {shown}){resumed}"


def _train_heading(cfg: AppConfig) -> str:
    workers = cfg.scaling.num_workers
    device = "GPU" if cfg.scaling.use_gpu else "CPU"
    return (f"{cfg.training.mode}, up to {cfg.training.epochs} epochs on {workers} {device} "
            f"worker{'s' if workers > 1 else ''}")


def _calibrate_line(info: dict[str, Any]) -> str:
    return f"T {info['temperature']:.3f}, ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f}, policy {info['policy']}"


def _evaluate_line(info: dict[str, Any]) -> str:
    return f"val_test accuracy {info['accuracy']:.4f}, coverage {info['coverage']:.3f} under the policy"


def _insights_line(info: dict[str, Any]) -> str:
    if info.get("disabled"):
        return "off (insights.enabled: false)"
    reference = info.get("reference")
    compared = (f", linear reference {reference['val_test_accuracy']:.4f} vs model {info['model_accuracy']:.4f}"
                if reference else "")
    return (f"map of {info['map']['points']} points (pca), storyboard {info['storyboard']['confident_wrong']} "
            f"confident wrong of {info['n']}{compared}")


def _export_line(info: dict[str, Any]) -> str:
    return f"bundle verified, {info['model_version']}"


# --- the records ------------------------------------------------------------------------------

_TRAINED_ON = ("seed", "data", "model", "training", "scaling")

SPLITS = Stage("splits", ("seed", "data"), "ray_app.stages.splits:run", _splits_line, ("counts",))
TRAIN = Stage("train", _TRAINED_ON, "ray_app.stages.train:run", _train_line, ("epochs_run", "best_epoch"),
              progress="epochs", heading=_train_heading)
CALIBRATE = Stage("calibrate", (*_TRAINED_ON, "calibration"), "ray_app.stages.calibrate:run", _calibrate_line,
                  ("temperature", "ece_before", "ece_after", "policy"))
EVALUATE = Stage("evaluate", (*_TRAINED_ON, "calibration"), "ray_app.stages.evaluate:run", _evaluate_line,
                 ("accuracy", "coverage"))
INSIGHTS = Stage("insights", (*_TRAINED_ON, "calibration", "insights"), "ray_app.stages.insights:run",
                 _insights_line, ("map", "storyboard", "n"))
EXPORT = Stage("export", (*_TRAINED_ON, "calibration"), "ray_app.stages.export:run", _export_line,
               ("model_version",))

STAGES: tuple[Stage, ...] = (SPLITS, TRAIN, CALIBRATE, EVALUATE, INSIGHTS, EXPORT)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def run_pipeline(ctx: StageContext, stages: Sequence[Stage] = STAGES, rerun_from: str | None = None) -> dict[str, Any]:
    """Run `stages` in order. A stage already complete for the same config is skipped,
    until one stage runs: every stage after it then runs too (its inputs changed).
    `rerun_from` names the first stage that runs whether complete or not. Each stage
    shows on `ctx.console`: its status while it runs, one line at its end."""
    total, rerun = len(stages), False
    for number, stage in enumerate(stages, start=1):
        rerun = rerun or stage.name == rerun_from
        if not rerun and ctx.run.stage_complete(stage.name, stage.fingerprint(ctx.cfg)):
            ctx.console.skipped(number, total, stage)
            continue
        rerun = True
        with ctx.console.stage(number, total, stage, ctx.run, stage.heading(ctx.cfg) if stage.heading else None):
            stage.run(ctx)
    return ctx.run.metadata()["stages"]
