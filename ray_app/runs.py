"""Run directories: their layout, their metadata and their status.

`runs/<name>/` holds `config.yaml` (resolved), `metadata.json` (per-stage status,
timings, versions, config fingerprints), and one directory per stage. `Run` owns the
layout: every artefact's path is a property of it (`run.train.model_dir`,
`run.calibration.policy`, `run.bundle_dir`...), and no other module spells one out.
Runs are found by scanning for `metadata.json`, so a run trained anywhere shows up
once its directory is under the runs root.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field

from ray_app.config import AppConfig, run_name, validate_config
from ray_app.errors import NotReady, UserError
from trainers.families import InvalidParams, family_and_params
from trainers.history import HistoryFiles

if TYPE_CHECKING:
    from calibration.policy import Policy

# Set by the control plane in a launched job's environment: JSON with the job's
# submission id and template, recorded in the run's metadata as `launch`.
LAUNCH_ENV = "RAY_APP_LAUNCH"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written through a hidden sibling and renamed: a reader
    (a dashboard polling the file) sees the old content or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    tmp.replace(path)


def library_versions() -> dict[str, str]:
    import pydantic
    import ray
    import torch
    import transformers

    from ray_app import __version__

    return {
        "ray_app": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pydantic": pydantic.__version__,
    }


def launch_from_env() -> dict[str, Any] | None:
    raw = os.environ.get(LAUNCH_ENV)
    if not raw:
        return None
    try:
        launch = json.loads(raw)
    except ValueError:
        return None
    return {**launch, "at": _now()} if isinstance(launch, dict) else None


def launch_fields(launch: dict[str, Any]) -> dict[str, Any]:
    """The metadata a launch records: `launch` (submission id, template name, when) and,
    when a template launched the run, `template` (its name, description, when it was
    saved and when it launched this run), the one place a run says its template."""
    template = launch.get("template")
    fields: dict[str, Any] = {"launch": {**launch, "template": template.get("name") if isinstance(template, dict) else template}}
    if isinstance(template, dict) and template.get("name"):
        fields["template"] = {**template, "launched": launch["at"]}
    return fields


def run_template(meta: dict[str, Any]) -> str | None:
    """The name of the template that launched a run, from its metadata."""
    return (meta.get("template") or {}).get("name") or (meta.get("launch") or {}).get("template") or None


# --- the layout -------------------------------------------------------------------------
# Every path inside a run directory is spelt out here and nowhere else. Formats that
# travel on their own (the splits directory, a saved model directory, the bundle) name
# the files inside them in their own modules.

METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.yaml"
# Directories of an older layout's Ray Train storage hold files named like a run's.
RAY_STORAGE_DIR = "ray_storage"


@dataclass(frozen=True)
class TrainLayout:
    """`train/`: what training writes, and the logits it exports."""

    root: Path

    @property
    def metrics(self) -> Path:
        """One JSON row per epoch (rewritten whole each epoch by rank 0)."""
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def progress(self) -> Path:
        """Rank 0's step within the current epoch."""
        return self.root / "progress.json"

    @property
    def failures(self) -> Path:
        """One JSON line per worker failure Ray Train met (ray_app.train_failures)."""
        return self.root / "failures.jsonl"

    @property
    def budget(self) -> Path:
        """The compute budget estimated before training."""
        return self.root / "budget.json"

    @property
    def lr_range(self) -> Path:
        """lr: auto's range test: learning rates, smoothed losses, the chosen rate."""
        return self.root / "lr_range.json"

    @property
    def lr_range_plot(self) -> Path:
        """lr: auto's range test as a plot: the loss against the learning rate."""
        return self.root / "lr_range.png"

    @property
    def model_dir(self) -> Path:
        """The selected weights as a saved classifier (trainers.model)."""
        return self.root / "model"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, split: str) -> Path:
        """Logits and labels of `split` (val_test also features, row ids and the sha256
        of the weights that made them)."""
        return self.predictions_dir / f"{split}.npz"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage: its checkpoints, kept for resuming."""
        return self.root / RAY_STORAGE_DIR

    def history_files(self) -> HistoryFiles:
        """Where the training loop writes its history and progress."""
        return HistoryFiles(metrics_jsonl=str(self.metrics.resolve()), metrics_csv=str(self.metrics_csv.resolve()),
                            progress=str(self.progress.resolve()))


@dataclass(frozen=True)
class CalibrationLayout:
    """`calibration/`: what calibration fitted on val_calib, the policy and the report."""

    root: Path

    @property
    def temperature(self) -> Path:
        return self.root / "temperature.json"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def guardrail(self) -> Path:
        return self.root / "guardrail.json"

    @property
    def risk_control(self) -> Path:
        return self.root / "risk_control.json"

    @property
    def policy(self) -> Path:
        """The temperature and decision rule a bundle carries."""
        return self.root / "policy.json"

    @property
    def views(self) -> Path:
        """The calibration as data to draw (calibration.views)."""
        return self.root / "views.json"

    @property
    def report(self) -> Path:
        """The calibration report; its plots sit beside it."""
        return self.root / "report.md"


@dataclass(frozen=True)
class InsightsLayout:
    """`insights/`: what the model learned and where it fails, on val_test."""

    root: Path

    @property
    def outcomes(self) -> Path:
        return self.root / "outcomes.npz"

    @property
    def maps_dir(self) -> Path:
        """Cached meaning maps, one file per method and key."""
        return self.root / "maps"

    def map(self, method: str, key: str) -> Path:
        return self.maps_dir / f"{method}_{key}.json"

    @property
    def storyboard(self) -> Path:
        return self.root / "storyboard.json"

    @property
    def reference(self) -> Path:
        return self.root / "reference.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def meaning_map_png(self) -> Path:
        return self.root / "meaning_map.png"

    @property
    def storyboard_png(self) -> Path:
        return self.root / "storyboard.png"


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh sibling of `final` to write into; it replaces `final` only when the
    block ends without error, so a reader never sees half of a new set of files."""
    staging = final.with_name(f"{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


class Run:
    """A run directory: its layout, its `metadata.json` and its stages' status."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = root.name

    @classmethod
    def for_config(cls, cfg: AppConfig) -> Run:
        return cls.under(Path(cfg.storage.root), run_name(cfg))

    @classmethod
    def under(cls, root: Path, name: str) -> Run:
        """The run called `name` in the runs root `root` (whether it exists or not)."""
        return cls(root / name)

    # --- layout ---
    @property
    def config_path(self) -> Path:
        """The resolved config (every default filled in)."""
        return self.root / CONFIG_FILE

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA_FILE

    @property
    def log_path(self) -> Path:
        """The whole output of every command on the run (ray_app.runlog)."""
        return self.root / "logs" / "run.log"

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    @property
    def train(self) -> TrainLayout:
        return TrainLayout(self.root / "train")

    @property
    def calibration(self) -> CalibrationLayout:
        return CalibrationLayout(self.root / "calibration")

    @property
    def calibration_tune_dir(self) -> Path:
        """Ray Tune's storage for the guardrail sweep."""
        return self.root / "calibration_tune"

    @property
    def evaluation(self) -> Path:
        """val_test metrics under the policy."""
        return self.root / "eval" / "metrics.json"

    @property
    def insights(self) -> InsightsLayout:
        return InsightsLayout(self.root / "insights")

    @property
    def bundle_dir(self) -> Path:
        return self.root / "bundle"

    def exists(self) -> bool:
        return self.metadata_path.is_file()

    # --- what earlier stages left ---
    def config(self) -> AppConfig | None:
        """The resolved config the run recorded, or None when it has none or it no
        longer validates (a run made by an older version with other fields)."""
        try:
            return validate_config(yaml.safe_load(self.config_path.read_text()) or {}, str(self.config_path))
        except (OSError, yaml.YAMLError, UserError, InvalidParams):
            return None

    def require_model(self) -> Path:
        """The trained model's directory, or NotReady saying how to train it."""
        model_dir = self.train.model_dir
        if not model_dir.is_dir():
            raise NotReady(f"run '{self.name}' has no trained model ({model_dir}); train it first: "
                           f"ray-app train {self.config_path}")
        return model_dir

    def policy(self) -> Policy:
        """The policy calibration chose, or NotReady: the run is not calibrated yet."""
        from calibration.policy import Policy

        path = self.calibration.policy
        if not path.is_file():
            raise NotReady(f"run '{self.name}' has no policy ({path}); calibrate it first: ray-app calibrate {self.name}")
        return Policy.model_validate_json(path.read_text())

    # --- metadata ---
    def metadata(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        return json.loads(self.metadata_path.read_text())

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        meta = self.metadata()
        meta.update(fields)
        write_json(self.metadata_path, meta)
        return meta

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.metadata().get("stages", {}).get(stage, {})

    def stage_complete(self, stage: str, fingerprint: str) -> bool:
        info = self.stage_info(stage)
        return info.get("status") == "complete" and info.get("fingerprint") == fingerprint

    def _set_stage(self, stage: str, **fields: Any) -> None:
        meta = self.metadata()
        meta.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        write_json(self.metadata_path, meta)

    def mark_stage(self, stage: str, status: str, reason: str) -> None:
        """Record a stage ended from outside (a sweep's scheduler stopped its trial):
        the stage itself never got to say so."""
        self._set_stage(stage, status=status, finished=_now(), error=reason)

    def prepare(self, cfg: AppConfig) -> None:
        """Create the run directory (or adopt an existing one) with the resolved config."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(cfg.resolved_dict(), sort_keys=False))
        meta = self.metadata()
        meta.setdefault("name", self.name)
        meta.setdefault("created", _now())
        meta.setdefault("stages", {})
        meta["config_fingerprint"] = cfg.fingerprint()
        meta["versions"] = library_versions()
        launch = launch_from_env()
        if launch is not None:
            meta.update(launch_fields(launch))
        write_json(self.metadata_path, meta)

    def record_launch(self) -> None:
        """How this run was launched (a control-plane job), when it was: an existing run
        that is run again records the newest launch."""
        launch = launch_from_env()
        if launch is not None and self.exists():
            self.update_metadata(**launch_fields(launch))

    @contextmanager
    def stage(self, stage: str, fingerprint: str) -> Iterator[dict[str, Any]]:
        """Mark a stage running, then complete (with the returned details) or failed.

        The yielded dict collects details the stage wants recorded (metrics, reads...).
        A stage only ever reads `complete` once its outputs are fully written."""
        details: dict[str, Any] = {}
        started = time.monotonic()
        self._set_stage(stage, status="running", started=_now(), fingerprint=fingerprint, error=None)
        try:
            yield details
        except BaseException as exc:
            # Ctrl-C, or SIGTERM (Ray's driver handler turns it into SystemExit): a stop, not a failure.
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            self._set_stage(
                stage, status=status, finished=_now(), seconds=round(time.monotonic() - started, 2),
                error=f"{type(exc).__name__}: {exc}"[:2000], **details,
            )
            raise
        self._set_stage(stage, status="complete", finished=_now(), seconds=round(time.monotonic() - started, 2),
                        **details)


def find_runs(root: Path) -> list[Run]:
    if not root.is_dir():
        return []
    return sorted(
        (Run(p.parent) for p in root.glob(f"**/{METADATA_FILE}") if RAY_STORAGE_DIR not in p.parts),
        key=lambda r: r.name,
    )


def resolve_run(name_or_path: str, root: Path) -> Run:
    direct = Path(name_or_path)
    for candidate in (Run(direct), Run(root / name_or_path)):
        if candidate.exists():
            return candidate
    matches = [r for r in find_runs(root) if r.name == name_or_path]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(r.name for r in find_runs(root)) or "none"
    raise UserError(
        f"no run named '{name_or_path}' under '{root}' (runs found: {known}); "
        "pass a run name, a run directory, or --root"
    )


class FamilyVariant(BaseModel):
    """A run seen as a trained variant of a model family."""

    run: str = Field(description="The run's name (its directory under the runs root).")
    path: str = Field(description="The run's directory.")
    family: str = Field(description="The backbone's model family, e.g. vit.")
    variant: str = Field(description="The family's variant name for the run's backbone, e.g. vit-h64-l4.")
    params: dict[str, Any] = Field(description="The backbone's family parameters, defaults filled in.")
    train_status: str | None = Field(description="The train stage's status (complete, failed, ...); null before it ran.")
    template: str | None = Field(description="The template that launched the run, if one did.")


def family_variants(root: Path, family: str | None = None) -> list[FamilyVariant]:
    """The runs under `root` as variants of their backbone's model family (only those of
    `family` when given), found by scanning like `find_runs`: a run trained anywhere
    shows up once its directory is under the root. Runs without a readable config are
    left out."""
    variants = []
    for run in find_runs(root):
        cfg = run.config()
        if cfg is None:
            continue
        found, params = family_and_params(cfg.model.backbone)
        if family is not None and found.name != family:
            continue
        meta = run.metadata()
        variants.append(
            FamilyVariant(
                run=run.name,
                path=str(run.root),
                family=found.name,
                variant=found.variant_name(params),
                params=params.model_dump(mode="json"),
                train_status=meta.get("stages", {}).get("train", {}).get("status"),
                template=run_template(meta),
            )
        )
    return variants
