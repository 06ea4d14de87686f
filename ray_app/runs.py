"""Run directories and their metadata.

`runs/<name>/` holds `config.yaml` (resolved), `metadata.json` (per-stage status,
timings, versions, config fingerprints), and one directory per stage. Runs are found
by scanning for `metadata.json`, so a run trained anywhere shows up once its directory
is under the runs root.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from ray_app.config import AppConfig, run_name, validate_config
from ray_app.errors import UserError
from trainers.families import InvalidParams, family_and_params

METADATA = "metadata.json"
# Set by the control plane in a launched job's environment: JSON with the job's
# submission id and template, recorded in the run's metadata as `launch`.
LAUNCH_ENV = "RAY_APP_LAUNCH"
# The pipeline's stages, in order (ray_app.pipeline runs them).
STAGES = ("splits", "train", "calibrate", "evaluate", "insights", "export")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
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


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = root.name

    @classmethod
    def for_config(cls, cfg: AppConfig) -> Run:
        return cls(Path(cfg.storage.root) / run_name(cfg))

    # --- layout ---
    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    def exists(self) -> bool:
        return self.metadata_path.is_file()

    # --- metadata ---
    def metadata(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        return json.loads(self.metadata_path.read_text())

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        meta = self.metadata()
        meta.update(fields)
        write_json_atomic(self.metadata_path, meta)
        return meta

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.metadata().get("stages", {}).get(stage, {})

    def stage_complete(self, stage: str, fingerprint: str) -> bool:
        info = self.stage_info(stage)
        return info.get("status") == "complete" and info.get("fingerprint") == fingerprint

    def _set_stage(self, stage: str, **fields: Any) -> None:
        meta = self.metadata()
        meta.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        write_json_atomic(self.metadata_path, meta)

    def mark_stage(self, stage: str, status: str, reason: str) -> None:
        """Record a stage ended from outside (a sweep's scheduler stopped its trial):
        the stage itself never got to say so."""
        self._set_stage(stage, status=status, finished=_now(), error=reason)

    def prepare(self, cfg: AppConfig) -> None:
        """Create the run directory (or adopt an existing one) with the resolved config."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(
            yaml.safe_dump(cfg.resolved_dict(), sort_keys=False)
        )
        meta = self.metadata()
        meta.setdefault("name", self.name)
        meta.setdefault("created", _now())
        meta.setdefault("stages", {})
        meta["config_fingerprint"] = cfg.fingerprint()
        meta["versions"] = library_versions()
        launch = launch_from_env()
        if launch is not None:
            meta.update(launch_fields(launch))
        write_json_atomic(self.metadata_path, meta)

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
        self._set_stage(
            stage, status="running", started=_now(), fingerprint=fingerprint, error=None
        )
        try:
            yield details
        except BaseException as exc:
            # Ctrl-C, or SIGTERM (Ray's driver handler turns it into SystemExit): a stop, not a failure.
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            self._set_stage(
                stage,
                status=status,
                finished=_now(),
                seconds=round(time.monotonic() - started, 2),
                error=f"{type(exc).__name__}: {exc}"[:2000],
                **details,
            )
            raise
        self._set_stage(
            stage,
            status="complete",
            finished=_now(),
            seconds=round(time.monotonic() - started, 2),
            **details,
        )


def find_runs(root: Path) -> list[Run]:
    if not root.is_dir():
        return []
    return sorted(
        (Run(p.parent) for p in root.glob(f"**/{METADATA}") if "ray_storage" not in p.parts),
        key=lambda r: r.name,
    )


def resolve_run(name_or_path: str, root: Path) -> Run:
    direct = Path(name_or_path)
    for candidate in (direct, root / name_or_path):
        if (candidate / METADATA).is_file():
            return Run(candidate)
    matches = [r for r in find_runs(root) if r.name == name_or_path]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(r.name for r in find_runs(root)) or "none"
    raise UserError(
        f"no run named '{name_or_path}' under '{root}' (runs found: {known}); "
        "pass a run name, a run directory, or --root"
    )


# --- status ---------------------------------------------------------------------------

# What a run's status can be: the states of a Ray job, plus `incomplete` for a run whose
# stages were run only in part (e.g. `ray-app train` alone).
RUN_STATUSES = ("pending", "running", "succeeded", "failed", "stopped", "incomplete")
_START = re.compile(r"==== start: .* · pid (\d+) on (\S+) ====")


def _writer_gone(log_file: Path) -> int | None:
    """The pid of the last command that wrote the run's log, when it ran on this host,
    never wrote its end line, and is no longer alive; else None."""
    from ray_app.runlog import END_MARK, START_MARK, tail_lines

    for line in reversed(tail_lines(log_file, 400)):
        if END_MARK in line:
            return None
        if START_MARK in line:
            found = _START.search(line)
            if not found or found.group(2) != socket.gethostname():
                return None
            pid = int(found.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return pid
            except PermissionError:
                return None
            return None
    return None


def status_from_metadata(meta: dict[str, Any], log_file: Path | None = None) -> tuple[str, str]:
    """(status, message) of a run from its stages: a failed stage's error is the
    message. A stage still marked running whose process is gone (killed before it could
    record anything; seen from the run's log on this host) is failed, never running
    forever."""
    stages = meta.get("stages") or {}
    statuses = {name: info.get("status") for name, info in stages.items()}
    if "running" in statuses.values():
        pid = _writer_gone(log_file) if log_file is not None and log_file.is_file() else None
        if pid is None:
            return "running", ""
        stage = next(name for name, status in statuses.items() if status == "running")
        return "failed", f"the process that ran stage {stage} (pid {pid}) ended without recording an outcome"
    for name, info in stages.items():
        if info.get("status") == "failed":
            return "failed", f"{name}: {info.get('error') or 'failed'}"
    for name, info in stages.items():
        if info.get("status") in ("stopped", "interrupted"):
            return "stopped", f"{name}: {info.get('error') or info.get('status')}"
    if all(statuses.get(stage) == "complete" for stage in STAGES):
        return "succeeded", ""
    return "incomplete", ""


# --- metrics history ------------------------------------------------------------------

METRICS_FILE = "metrics.jsonl"  # written by trainers.baseline, one JSON row per epoch


def read_metrics(
    path: Path, limit: int, order: str = "asc", since_epoch: int | None = None, keys: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of a run's `metrics.jsonl`: those after `since_epoch` when given, at most
    `limit` of them — the oldest first (`asc`) or the newest first (`desc`).

    Newest-first and `since_epoch` reads go backwards from the end of the file and stop
    as soon as they have what was asked for, so following a long run costs the new rows
    only, never a whole read. `keys` keeps only those columns (and `epoch`)."""
    from ray_app.runlog import lines_backwards

    def parse(line: str) -> dict[str, Any] | None:
        try:
            row = json.loads(line)
        except ValueError:
            return None  # a row being written
        return row if isinstance(row, dict) and "epoch" in row else None

    rows: list[dict[str, Any]] = []
    if order == "asc" and since_epoch is None:
        if path.is_file():
            with path.open() as handle:
                for line in handle:
                    row = parse(line)
                    if row is not None:
                        rows.append(row)
                        if len(rows) == limit:
                            break
    else:
        for line in lines_backwards(path):
            row = parse(line)
            if row is None:
                continue
            if since_epoch is not None and row["epoch"] <= since_epoch:
                break
            rows.append(row)
            if order == "desc" and len(rows) == limit:
                break
        rows.reverse()  # oldest first
        rows = rows[:limit] if order == "asc" else rows[::-1][:limit]
    if keys:
        wanted = set(keys) | {"epoch"}
        rows = [{k: v for k, v in row.items() if k in wanted} for row in rows]
    return rows


def run_config(run: Run) -> AppConfig | None:
    """The resolved config a run recorded (`config.yaml`), or None when it has none or
    it no longer validates (a run made by an older version with other fields)."""
    path = run.root / "config.yaml"
    try:
        return validate_config(yaml.safe_load(path.read_text()) or {}, str(path))
    except (OSError, yaml.YAMLError, UserError, InvalidParams):
        return None


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
        cfg = run_config(run)
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
