"""What the control plane does, apart from HTTP: launching, stopping, rerunning and
deleting runs, and keeping the index current. The routers call this; so could a script.

A launch validates the whole config first (every problem at once, nothing started),
writes the resolved config to `<runs root>/.launches/<submission id>.yaml` and submits
`ray-app run <that file>` as a Ray job. The job's environment carries the submission id
and template (`RAY_APP_LAUNCH`), so the run records how it was launched.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import shlex
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_app.config import AppConfig, apply_overrides, check_paths_exist, is_local_path, run_name, validate_model
from ray_app.control_plane.index import RunIndex
from ray_app.control_plane.jobs import ACTIVE_STATES, JobLauncher, JobServerUnavailable
from ray_app.control_plane.settings import ServerSettings
from ray_app.errors import Conflict, InvalidName, NotFound, RunExists, Unavailable
from ray_app.existing_runs import OnExists, config_changes, next_free_name, run_exists_message, with_run_name
from ray_app.review import export_reviewed, with_review_export
from ray_app.runs import LAUNCH_ENV, Run
from ray_app.templates import TemplateNotFound, TemplateStore, template_record
from trainers.families import family_and_params

logger = logging.getLogger(__name__)

# How long a submitted job may be unknown to the cluster before it counts as lost.
MISSING_JOB_GRACE_S = 30.0
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_name(name: str, what: str = "run") -> str:
    """A name that is a single directory or file name: letters, digits, '.', '_', '-',
    not starting with '.', so no request can address anything outside its root."""
    if not NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"{what} name '{name}' is not allowed: use letters, digits, '.', '_' and '-' "
            "(not starting with '.', no '..', no '/')"
        )
    return name


@dataclass
class Launched:
    run: str
    submission_id: str
    status: str
    template: str | None
    family: str | None


def absolute_paths(raw: dict[str, Any], base: Path) -> None:
    """Local paths in a config made absolute (from `base`, where the server runs): a
    job's driver starts in a working directory of Ray's, not the server's."""
    source = (raw.get("data") or {}).get("source") or {}
    path = source.get("path")
    if isinstance(path, str) and is_local_path(path) and not Path(path.removeprefix("file://")).is_absolute():
        source["path"] = str((base / path.removeprefix("file://")).resolve())
    reviewed = (raw.get("data") or {}).get("reviewed")
    if isinstance(reviewed, list):
        raw["data"]["reviewed"] = [str((base / p.removeprefix("file://")).resolve()) if isinstance(p, str) and is_local_path(p)
                                   and not Path(p.removeprefix("file://")).is_absolute() else p for p in reviewed]
    model = raw.get("model") or {}
    preprocessing = model.get("preprocessing") or {}
    tokenizer = preprocessing.get("tokenizer")
    if isinstance(tokenizer, str) and not Path(tokenizer).is_absolute():
        preprocessing["tokenizer"] = str((base / tokenizer).resolve())
    backbone_id = (model.get("backbone") or {}).get("id")
    if isinstance(backbone_id, str) and not Path(backbone_id).is_absolute() and (base / backbone_id).is_dir():
        model["backbone"]["id"] = str((base / backbone_id).resolve())


class ControlPlane:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        settings.runs_root.mkdir(parents=True, exist_ok=True)
        self.index = RunIndex(settings.runs_root, settings.index_path)
        assert settings.templates_root is not None  # ServerSettings fills it in
        self.templates = TemplateStore(settings.templates_root)
        self.launcher = JobLauncher(settings.ray_address, settings.local_ray_cpus,
                                    settings.runs_root / ".ray-head.log", enabled=settings.ray_jobs,
                                    timeout_s=settings.ray_timeout_s)
        self._launch_lock = threading.Lock()
        # Recorded in the index but not yet accepted by Ray: the poller must not take
        # "no such job" for one of these as a job that vanished.
        self._submitting: set[str] = set()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.index.refresh()
        workers = [(self._keep_current, "index")]
        if self.settings.ray_jobs:
            workers.append((self._connect, "ray-jobs"))
        for target, name in workers:
            thread = threading.Thread(target=target, name=f"control-plane-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.launcher.stop()
        self.index.close()

    def _connect(self) -> None:
        self.launcher.start()
        if self.launcher.ready:
            self._recover_jobs()

    def _recover_jobs(self) -> None:
        """Jobs this service launched that the index does not know (it was rebuilt, or
        another server launched them): Ray keeps each job's run in its metadata."""
        try:
            jobs = self.launcher.list_jobs()
        except Exception as exc:  # noqa: BLE001 - recovery is best effort
            logger.warning("cannot list the cluster's jobs: %s", exc)
            return
        for job in jobs:
            meta = job.metadata or {}
            sid = job.submission_id
            if meta.get("launched_by") != "ray-app" or not sid or not meta.get("run") or self.index.has_job(sid):
                continue
            status = getattr(job.status, "value", str(job.status)).lower()
            self.index.record_job(sid, meta["run"], meta.get("template") or None, meta.get("family") or None,
                                  "", state=status, message=job.message or "",
                                  created=(job.start_time or 0) / 1000 or None)

    def _keep_current(self) -> None:
        last_refresh = 0.0
        while not self._stopped.wait(self.settings.job_poll_s):
            if self.launcher.ready:
                for job in self.index.active_jobs():
                    if job["submission_id"] in self._submitting:
                        continue
                    try:
                        state = self.launcher.state(job["submission_id"])
                    except Exception as exc:  # noqa: BLE001 - the next poll tries again
                        if "does not exist" in str(exc) and time.time() - job["created"] > MISSING_JOB_GRACE_S:
                            # The cluster has no record of it (restarted, or another cluster's):
                            # it will never finish, so it must not look pending forever.
                            self.index.update_job(job["submission_id"], "failed",
                                                  f"the Ray cluster at {self.launcher.address} has no such job")
                        else:
                            logger.warning("job %s: %s", job["submission_id"], exc)
                        continue
                    self.index.update_job(job["submission_id"], state.state, state.message)
            if time.monotonic() - last_refresh >= self.settings.index_refresh_s:
                try:
                    self.index.refresh()
                except Exception:  # noqa: BLE001 - a bad run directory must not stop the loop
                    logger.exception("index refresh failed")
                last_refresh = time.monotonic()

    # --- runs ------------------------------------------------------------------------

    def run(self, name: str) -> Run:
        """The run of that name under the runs root (a checked, plain name)."""
        return Run.under(self.settings.runs_root, check_name(name))

    def require_run(self, name: str) -> dict[str, Any]:
        row = self.index.get(check_name(name))
        if row is None:
            self.index.refresh_run(name)
            row = self.index.get(name)
        if row is None:
            raise NotFound(f"no run named '{name}' under {self.settings.runs_root}")
        return row

    def source_config(self, template: str | None, config: dict[str, Any] | None) -> dict[str, Any]:
        """The config a request names: a saved template's, or the one it carries."""
        if template is not None:
            return self.templates.get(check_name(template, "template")).config
        return config or {}

    def resolve_config(self, raw: dict[str, Any], overrides: list[str]) -> AppConfig:
        """The config a launch would run: overrides applied, its runs root set to this
        service's, local paths made absolute, everything validated at once."""
        raw = copy.deepcopy(raw)
        problems = apply_overrides(raw, overrides)
        if not isinstance(raw.get("storage"), dict):
            raw["storage"] = {}
        # Runs launched here live in this service's runs root: that is its store.
        raw["storage"]["root"] = str(self.settings.runs_root)
        absolute_paths(raw, Path.cwd())
        cfg = validate_model(AppConfig, raw, "config", problems)
        check_paths_exist(cfg)
        return cfg

    def existing_run(self, cfg: AppConfig) -> dict[str, Any] | None:
        """The run a launch of `cfg` would meet under its name, as the launch form shows
        it: its status, whether its recorded config is the same, its page."""
        name = run_name(cfg)
        run = self.run(name)
        job = self.index.latest_job(name)
        if not run.exists() and (job is None or job["state"] not in ACTIVE_STATES):
            return None
        row = self.index.get(name) or {}
        status = job["state"] if job is not None and job["state"] in ACTIVE_STATES else row.get("status", "incomplete")
        pending = frozenset(job["run"] for job in self.index.active_jobs())
        return {"run": name, "status": status, "same_config": run.exists() and not config_changes(run, cfg),
                "link": f"/runs/{name}", "next_free": next_free_name(self.settings.runs_root, name, pending)}

    def launch_template(self, name: str, overrides: list[str], on_exists: OnExists = "refuse") -> Launched:
        """Launch a saved template (with overrides); the run records the template."""
        template = self.templates.get(check_name(name, "template"))
        return self.launch(template.config, overrides, template=template_record(template), on_exists=on_exists)

    def launch(self, raw: dict[str, Any], overrides: list[str], template: dict[str, str] | None = None,
               on_exists: OnExists = "refuse") -> Launched:
        """Validate, then submit `ray-app run` as a Ray job. `template`: the record of
        the template launched (`templates.template_record`), kept in the run.
        `on_exists`: what to do when a run of the config's name exists (`runs.OnExists`);
        a finished run is never trained again unasked."""
        cfg = self.resolve_config(raw, overrides)
        family = family_and_params(cfg.model.backbone)[0].name
        template_name = template["name"] if template else None
        with self._launch_lock:
            cfg = self._settle_name(cfg, on_exists)
            if not self.settings.ray_jobs:
                # Refused before anything is recorded: a job that can never start must not be listed.
                raise Unavailable(self.launcher.error or "no Ray job server")
            try:
                self.launcher.client()  # unreachable, or refusing our token: said in seconds, nothing recorded
            except JobServerUnavailable as exc:
                raise Unavailable(str(exc)) from None
            name = run_name(cfg)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            submission_id = f"ray-app-{name}-{stamp}-{secrets.token_hex(3)}"
            self.settings.launches_dir.mkdir(parents=True, exist_ok=True)
            config_path = self.settings.launches_dir / f"{submission_id}.yaml"
            config_path.write_text(
                f"# ray-app run {config_path}\n# launched as Ray job {submission_id}"
                + (f" from template {template_name}" if template_name else "") + "\n"
                + yaml.safe_dump(cfg.resolved_dict(), sort_keys=False)
            )
            self.index.record_job(submission_id, name, template_name, family, str(config_path))
            self._submitting.add(submission_id)
        try:
            self.launcher.submit(
                # The job settles resume and replace itself, once it runs: until then the run stays as it is.
                self._entrypoint(config_path, on_exists if on_exists in ("resume", "replace") else "refuse"),
                submission_id,
                metadata={"run": name, "template": template_name or "", "family": family, "launched_by": "ray-app"},
                env_vars={LAUNCH_ENV: json.dumps({"submission_id": submission_id, "template": template})},
            )
        except JobServerUnavailable as exc:
            self.index.update_job(submission_id, "failed", str(exc))
            raise Unavailable(str(exc)) from None
        except BaseException as exc:
            self.index.update_job(submission_id, "failed", f"submission failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self._submitting.discard(submission_id)
        return Launched(run=name, submission_id=submission_id, status="pending", template=template_name, family=family)

    def _settle_name(self, cfg: AppConfig, on_exists: OnExists) -> AppConfig:
        """The config under the name it will train as: refused when that run exists and
        the launch did not choose, renamed for `new`; never while the run is active."""
        name = run_name(cfg)
        run = self.run(name)
        pending = {job["run"] for job in self.index.active_jobs()}
        if on_exists == "new" and (run.exists() or name in pending):
            return with_run_name(cfg, next_free_name(self.settings.runs_root, name, frozenset(pending)))
        self._refuse_if_active(name)
        if on_exists == "refuse" and run.exists():
            raise RunExists(run_exists_message(run, config_changes(run, cfg), api=True), name)
        return cfg

    def _entrypoint(self, config_path: Path, on_exists: OnExists) -> str:
        # On a head of our own, the driver runs on this machine: this interpreter has
        # ray-app. A cluster's nodes have it installed as a command.
        program = [sys.executable, "-m", "ray_app"] if self.launcher.local_head is not None else ["ray-app"]
        return shlex.join([*program, "run", str(config_path), "--on-exists", on_exists])

    def _refuse_if_active(self, name: str) -> None:
        job = self.index.latest_job(name)
        row = self.index.get(name)
        if (job is not None and job["state"] in ACTIVE_STATES) or (row is not None and row["status"] == "running"):
            raise Conflict(f"run '{name}' is already running; stop it first (POST /api/v1/runs/{name}/stop)")

    def stop_run(self, name: str) -> dict[str, Any]:
        self.require_run(name)
        job = self.index.latest_job(name)
        if job is None or job["state"] not in ACTIVE_STATES:
            raise Conflict(f"run '{name}' has no pending or running job to stop")
        try:
            self.launcher.stop_job(job["submission_id"])
        except JobServerUnavailable as exc:
            raise Unavailable(str(exc)) from None
        return {"run": name, "submission_id": job["submission_id"], "status": "stopping"}

    def rerun(self, name: str, overrides: list[str], on_exists: OnExists = "refuse",
              with_reviewed: bool = False) -> Launched:
        """Launch the run's config again (`launch`), with `overrides`. `with_reviewed`:
        also train on the labels people gave its served answers (`_with_reviewed`)."""
        row = self.require_run(name)
        config_file = self.run(name).config_path
        if not config_file.is_file():
            job = self.index.latest_job(name)
            if job is None or not job.get("config_path") or not Path(job["config_path"]).is_file():
                raise NotFound(f"run '{name}' has no config to run again yet")
            config_file = Path(job["config_path"])
        raw = yaml.safe_load(config_file.read_text()) or {}
        if with_reviewed:
            raw = self._with_reviewed(name, raw)
        template = None
        if row.get("template"):
            try:
                template = template_record(self.templates.get(row["template"]))
            except TemplateNotFound:  # deleted since: the run still says which it was
                template = {"name": row["template"]}
        return self.launch(raw, overrides, template=template, on_exists=on_exists)

    def _with_reviewed(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The run's config with its labelled review items exported now
        (`review.export_reviewed`: unchanged labels reuse their export) and added to
        `data.reviewed` (`review.with_review_export`)."""
        if not self.settings.ray_jobs:
            # Refused before an export is written for a launch that cannot happen.
            raise Unavailable(self.launcher.error or "no Ray job server")
        return with_review_export(raw, export_reviewed(self.run(name), self.settings.runs_root)["path"])

    def delete_run(self, name: str) -> None:
        row = self.require_run(name)
        self._refuse_if_active(name)
        if row["status"] in ACTIVE_STATES:
            raise Conflict(f"run '{name}' is {row['status']}; stop it before deleting it")
        directory = self.run(name).root
        if directory.resolve().parent != self.settings.runs_root:
            raise InvalidName(f"run '{name}' is not a directory of the runs root")
        shutil.rmtree(directory, ignore_errors=True)
        self.index.forget_run(name)
