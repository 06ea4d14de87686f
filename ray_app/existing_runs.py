"""A run whose name is taken: what a launch does about it (`claim_run`), one rule for
the CLI (`ray-app run/train --on-exists`) and the control plane (`on_exists`). A
finished run is never retrained with another config unasked, so `config.yaml`, the
metadata and the index always describe what the run trained."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, get_args

import yaml

from ray_app.config import AppConfig
from ray_app.dotted import flatten_dotted
from ray_app.errors import RunExists
from ray_app.runs import Run

# What a launch does when a run of its name exists. refuse: stop and say so (the CLI
# continues a run whose recorded config is the same); new: train under the next free
# name; resume: continue that run with this config, keeping the stages still valid for
# it; replace: delete that run, then train afresh.
OnExists = Literal["refuse", "new", "resume", "replace"]
ON_EXISTS_CHOICES: tuple[str, ...] = get_args(OnExists)

# Keys that place a run rather than shape it: the same run launched from the CLI
# (relative runs root) and from the control plane (absolute) is the same config.
_PLACEMENT_KEYS = frozenset({"storage.root", "name_pattern"})


def config_changes(run: Run, cfg: AppConfig) -> list[str]:
    """The dotted keys where `cfg` differs from the config `run` recorded, as
    "key: old -> new"; ["config.yaml: missing"] when it recorded none."""
    try:
        recorded = flatten_dotted(yaml.safe_load(run.config_path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return [f"{run.config_path.name}: missing or unreadable"]
    wanted = flatten_dotted(cfg.resolved_dict())
    return [
        f"{key}: {recorded.get(key)!r} -> {wanted.get(key)!r}"
        for key in sorted(recorded.keys() | wanted.keys())
        if key not in _PLACEMENT_KEYS and recorded.get(key) != wanted.get(key)
    ]


def next_free_name(root: Path, name: str, taken: frozenset[str] = frozenset()) -> str:
    """`<name>-2`, `<name>-3`, ...: the first with no run directory under `root` and not
    in `taken` (names a launch is already submitting)."""
    suffix = 2
    while Run.under(root, f"{name}-{suffix}").root.exists() or f"{name}-{suffix}" in taken:
        suffix += 1
    return f"{name}-{suffix}"


def with_run_name(cfg: AppConfig, name: str) -> AppConfig:
    """`cfg` training under exactly `name` (a plain name: its pattern has no placeholder)."""
    return cfg.model_copy(update={"name_pattern": name})


def run_exists_message(run: Run, changes: list[str], api: bool) -> str:
    """Why a launch stopped at an existing run, and the three ways on."""
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        what = f"run '{run.name}' exists ({run.root}) with a different config ({shown})"
    else:
        what = f"run '{run.name}' exists ({run.root}) with this config"
    option = (lambda choice: f'"on_exists": "{choice}"') if api else (lambda choice: f"--on-exists {choice}")
    return (f"{what}; it is not changed without being asked. Choose {option('new')} (train under the next free "
            f"name), {option('resume')} (continue it with this config: stages still valid are kept, its "
            f"config.yaml is updated) or {option('replace')} (delete it and train afresh)")


def claim_run(cfg: AppConfig, on_exists: OnExists = "refuse", api: bool = False,
              taken: frozenset[str] = frozenset()) -> AppConfig:
    """The config to train, once its run name is settled against what is on disk.

    A run that exists is changed only when asked: `refuse` raises RunExists (on the
    CLI, `api=False`, a run whose recorded config is the same just continues: its
    finished stages are skipped); `new` renames to the next free name; `resume` keeps
    the run and records this config in it; `replace` deletes it first. `config.yaml`
    and the metadata then always describe what the run trains."""
    run = Run.for_config(cfg)
    if not run.exists():  # no metadata.json: nothing trained there to lose
        return cfg
    if on_exists == "new":
        return with_run_name(cfg, next_free_name(run.root.parent, run.name, taken))
    if on_exists == "replace":
        shutil.rmtree(run.root)
        return cfg
    if on_exists == "refuse":
        changes = config_changes(run, cfg)
        if api or changes:
            raise RunExists(run_exists_message(run, changes, api), run.name)
    # Before any stage runs: a stage that is skipped must not leave the old config on record.
    run.prepare(cfg)
    return cfg
