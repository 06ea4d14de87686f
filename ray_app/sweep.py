"""`ray-app sweep`: Ray Tune over training hyperparameters, one registry run per trial.

The sweep file (`--space`) names config fields by dotted path and gives each a search
dimension; everything else comes from the run config. The driver checks every key and
every value a dimension can produce against the config schema before Ray starts, makes
the splits once, preprocesses train / val_select once, and hands them to the trials.

Each trial is a Tune function that resolves its config, adopts the shared splits into
its own run directory (name from the config's name pattern, extended by the swept keys
it does not already show) and calls the same `run_training` as `ray-app train`: one
`TorchTrainer` whose every epoch reaches Tune through `TuneReportCallback`, so ASHA can
stop a trial between epochs. A trial that finishes is a complete trained run (model and
val_calib / val_test logits): `ray-app run best.yaml` goes straight on to calibration.

Outputs, in `<storage.root>/sweeps/<name>/`: `results.csv` and `results.md` (one row
per trial, best first), `best.yaml` (the best trial's resolved config, a preset), and
`sweep.json` (the spec, the trials, the best).
"""

from __future__ import annotations

import copy
import csv
import difflib
import json
import logging
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import ray.train
import yaml
from filelock import FileLock
from pydantic import BaseModel, Field, ValidationError, model_validator
from ray import tune

from ray_app.config import (
    AppConfig,
    _describe,
    name_placeholders,
    read_yaml_mapping,
    run_name,
    validate_config,
    validate_model,
)
from ray_app.errors import ConfigError, UserError
from trainers.config import StrictModel

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


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def trial_config(base_raw: dict[str, Any], values: dict[str, Any], name_pattern: str) -> dict[str, Any]:
    """The raw config of one trial: the base with the sampled values and the sweep's
    name pattern."""
    raw = copy.deepcopy(base_raw)
    for key, value in values.items():
        _set_dotted(raw, key, value)
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
                problems += [f"space {key}={value!r}: {_describe(e, AppConfig)}" for e in exc.errors()]
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


# --- the trial ------------------------------------------------------------------------


class EpochsToRunLog(ray.train.UserCallback):
    """Each reported epoch as one line in the trial run's log. Ray Train calls it on its
    controller, wherever that runs: the run directory is shared storage, so the line
    lands next to the run's metrics."""

    def __init__(self, log_file: str, epochs: int) -> None:
        self.log_file, self.epochs = log_file, epochs

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray_app.console import epoch_line
        from ray_app.runlog import LogSink

        if metrics and "train/loss" in metrics[0]:
            sink = LogSink(Path(self.log_file))
            sink.write(epoch_line(metrics[0], self.epochs).strip(), stage="train")
            sink.close()


def _sweep_trial(
    values: dict[str, Any],
    base_raw: dict[str, Any],
    name_pattern: str,
    splits_dir: str,
    prepared: dict[str, Any],
    working_dir: str,
    lock_dir: str,
) -> None:
    """One Tune trial: a registry run trained by the same code as `ray-app train`."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_app.pipeline import adopt_splits, run_training, stage_fingerprint
    from ray_app.runlog import END_MARK, START_MARK, LogSink, SinkHandler, log_path
    from ray_app.runs import Run
    from ray_app.splits import SplitReader

    # Tune starts a trial in its own trial directory; relative paths in the config
    # (storage root, tokenizer, a local backbone) mean where `ray-app sweep` ran.
    if Path(working_dir).is_dir():
        os.chdir(working_dir)
    cfg = validate_config(trial_config(base_raw, values, name_pattern), "sweep trial")
    run = Run.for_config(cfg)
    # The trial's own records (its Ray Train driver, errors) go to its run's log; its
    # workers' output reaches the sweep's log through Ray's forwarding to the driver.
    sink = LogSink(log_path(run.root), ready=run.exists)
    sink.stage = "train"
    handler = SinkHandler(sink)
    logging.getLogger().addHandler(handler)
    sink.write(f"{START_MARK}: sweep trial {values} · pid {os.getpid()} ====", stage="-")
    try:
        # Two trials can resolve to one config (a grid repeated by num_samples): the second
        # waits for the first and reports its finished history instead of training again.
        with FileLock(str(Path(lock_dir) / f"{run.name}.lock")):
            if run.stage_complete("train", stage_fingerprint(cfg, "train")):
                for line in (run.train_dir / "metrics.jsonl").read_text().splitlines():
                    tune.report({**json.loads(line), "cached": True})
                return
            reader = adopt_splits(cfg, run, SplitReader(Path(splits_dir)))
            sink.write(f"the sweep's shared splits: {splits_dir}", stage="splits")  # the run exists: log from here on
            # The log line first: once Tune has the report, ASHA may end the trial at once.
            epochs_logged = EpochsToRunLog(str(log_path(run.root).resolve()), cfg.training.epochs)
            run_training(cfg, run, reader, prepared=prepared, train_callbacks=[epochs_logged, TuneReportCallback()])
    except BaseException as exc:
        sink.write("".join(traceback.format_exception(exc)).rstrip(), stage="error")
        sink.write(f"{END_MARK}: {type(exc).__name__} ====", stage="-")
        raise
    else:
        sink.write(f"{END_MARK}: trial done ====", stage="-")
    finally:
        logging.getLogger().removeHandler(handler)
        sink.close()


# --- the driver -----------------------------------------------------------------------


@dataclass
class TrialRow:
    trial: int
    run: str
    values: dict[str, Any]
    status: str
    epochs_run: int
    best_epoch: int | None
    best_value: float | None

    def table_cells(self, keys: list[str]) -> list[str]:
        best = "-" if self.best_value is None else f"{self.best_value:.4f}"
        return [
            str(self.trial),
            *(_short(self.values.get(k)) for k in keys),
            str(self.epochs_run),
            best,
            "-" if self.best_epoch is None else str(self.best_epoch),
            self.status,
            self.run,
        ]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def default_concurrency(cfg: AppConfig) -> int:
    import ray

    per_trial = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    return max(1, math.floor(ray.cluster_resources().get("CPU", 1.0) / per_trial))


def _trial_run_name(values: dict[str, Any], base_raw: dict[str, Any], name_pattern: str) -> str:
    return run_name(validate_config(trial_config(base_raw, values, name_pattern), "sweep trial"))


def _trial_row(
    index: int, result: Any, keys: list[str], metric_key: str, mode: str, base: AppConfig,
    base_raw: dict[str, Any], name_pattern: str,
) -> TrialRow:
    from ray_app.runs import Run

    values = {k: result.config.get(k) for k in keys}
    name = _trial_run_name(values, base_raw, name_pattern)
    frame = result.metrics_dataframe
    history = frame.to_dict("records") if frame is not None and len(frame) else []
    if result.error is not None:
        status = f"error: {type(result.error).__name__}"
    elif Run(Path(base.storage.root) / name).stage_info("train").get("status") == "complete":
        planned = int(values.get("training.epochs") or base.training.epochs)
        status = "complete" if len(history) >= planned else "complete (early stopping)"
    else:
        status = "stopped by ASHA"  # a trial FIFO never stops either completes or errors
    scored = [r for r in history if metric_key in r]
    best = (min if mode == "min" else max)(scored, key=lambda r: r[metric_key]) if scored else None
    return TrialRow(
        trial=index,
        run=name,
        values=values,
        status=status,
        epochs_run=len(history),
        best_epoch=None if best is None else int(best["epoch"]),
        best_value=None if best is None else float(best[metric_key]),
    )


class SweepProgress(tune.Callback):
    """One line per trial epoch and per finished trial, named by the trial's run (Tune's
    own status table is off: its trial ids mean nothing in the run registry)."""

    def __init__(self, echo: Callable[[str], None], metric_key: str, run_names: Callable[[dict[str, Any]], str]) -> None:
        self.echo = echo
        self.metric_key = metric_key
        self.run_names = run_names
        self.names: dict[str, str] = {}  # trial id -> run name: resolved once, not per epoch

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the echo writes to this
        # driver's console, which means nothing anywhere else.
        return {**self.__dict__, "echo": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.echo = self.echo or (lambda line: None)

    def _name(self, trial: Any) -> str:
        if trial.trial_id not in self.names:
            self.names[trial.trial_id] = self.run_names(trial.config)
        return self.names[trial.trial_id]

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        if self.metric_key in result:
            self.echo(
                f"  {self._name(trial)} epoch {result.get('epoch')}: "
                f"{self.metric_key}={result[self.metric_key]:.4f}"
            )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.echo(f"  {self._name(trial)} ended after {epochs} epoch(s)")


@dataclass
class SweepOutcome:
    directory: Path
    rows: list[TrialRow]
    best: TrialRow
    best_config: Path
    table: str


def _write_outputs(
    directory: Path, sweep: SweepConfig, keys: list[str], rows: list[TrialRow], best: TrialRow,
    best_raw: dict[str, Any], metric_key: str, command: str,
) -> tuple[Path, str]:
    header = ["trial", *keys, "epochs", f"best {metric_key}", "best epoch", "status", "run"]
    with (directory / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(row.table_cells(keys) for row in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.table_cells(keys)) + " |" for row in rows]
    table = "\n".join(lines)
    (directory / "results.md").write_text(f"# sweep {directory.name}\n\n`{command}`\n\n{table}\n")
    best_path = directory / "best.yaml"
    best_path.write_text(
        f"# ray-app run {best_path}\n"
        f"# Best trial of sweep {directory.name}: {metric_key}={best.best_value:.4f} at epoch "
        f"{best.best_epoch} (run {best.run}).\n"
        + yaml.safe_dump(best_raw, sort_keys=False)
    )
    (directory / "sweep.json").write_text(
        json.dumps(
            {
                "command": command,
                "spec": sweep.model_dump(mode="json"),
                "metric": metric_key,
                "trials": [asdict(row) for row in rows],
                "best": asdict(best),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    return best_path, table


def sweep_directory(cfg: AppConfig, name: str) -> Path:
    return Path(cfg.storage.root) / "sweeps" / name


def run_sweep(
    cfg: AppConfig,
    base_raw: dict[str, Any],
    sweep: SweepConfig,
    name: str,
    command: str,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run the sweep on the connected Ray; write and return the results."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ray_app.pipeline import prepare_training_data, write_shared_splits
    from ray_app.runlog import LogSink, log_path
    from ray_app.runs import Run

    directory = sweep_directory(cfg, name)
    directory.mkdir(parents=True, exist_ok=True)
    keys = list(sweep.space)
    metric = sweep.metric or cfg.training.early_stopping.metric
    metric_key = f"val_select/{metric}"
    mode = "min" if metric == "loss" else "max"
    name_pattern = sweep_name_pattern(cfg.name_pattern, keys)
    epochs_key = "training.epochs"
    max_epochs = max(
        [int(v) for v in sweep.space[epochs_key].probe_values()] if epochs_key in sweep.space else [cfg.training.epochs]
    )
    concurrency = sweep.max_concurrent_trials or default_concurrency(cfg)

    echo(f"sweep {name}: {sweep.num_samples} sample(s) of {', '.join(keys)}; ranking by {metric_key} ({mode}); "
         f"{sweep.scheduler.kind}, up to {concurrency} trial(s) at once")
    reader = write_shared_splits(cfg, directory / "splits")
    (directory / "locks").mkdir(exist_ok=True)
    prepared = prepare_training_data(cfg, reader)

    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=min(sweep.scheduler.grace_period, max_epochs),
            reduction_factor=sweep.scheduler.reduction_factor,
            # A trial at its last epoch must not be stopped: the stop would kill it
            # before it saves its model and exports its logits.
            stop_last_trials=False,
        )
        if sweep.scheduler.kind == "asha"
        else FIFOScheduler()
    )
    trainable = tune.with_parameters(
        _sweep_trial, base_raw=base_raw, name_pattern=name_pattern,
        splits_dir=str(reader.splits_dir.resolve()), prepared=prepared, working_dir=str(Path.cwd()),
        lock_dir=str((directory / "locks").resolve()),
    )
    param_space = {k: dim.to_tune() for k, dim in sweep.space.items()}
    tuner = tune.Tuner(
        # The trial function only drives its TorchTrainer, whose workers hold the CPUs:
        # it asks for no CPU (a CPU per trial would starve the workers on a small
        # machine) and concurrency is bounded by the search algorithm instead. Tune
        # needs some resource in the request; a little memory is honest.
        tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric_key,
            mode=mode,
            scheduler=scheduler,
            num_samples=sweep.num_samples,
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=sweep.search_seed),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(directory.resolve()),
            verbose=0,
            callbacks=[SweepProgress(echo, metric_key, lambda config: _trial_run_name(
                {k: config.get(k) for k in keys}, base_raw, name_pattern
            ))],
        ),
    )
    results = tuner.fit()

    rows = [
        _trial_row(index, result, keys, metric_key, mode, cfg, base_raw, name_pattern)
        for index, result in enumerate(results)
    ]
    # Runs ASHA stopped never left their train stage: record why, so `runs list` says so.
    for row in rows:
        if row.status.startswith("stopped"):
            stopped = Run(Path(cfg.storage.root) / row.run)
            reason = f"{row.status} after {row.epochs_run} epoch(s)"
            stopped.mark_stage("train", "stopped", reason)
            LogSink(log_path(stopped.root)).write(f"{reason}: the error above is the scheduler ending the trial", "train")
    scored = [r for r in rows if r.best_value is not None]
    if not scored:
        errors = [str(r.error) for r in results if r.error is not None]
        raise UserError(f"sweep {name}: no trial reported a {metric_key}" + (f"; first error: {errors[0]}" if errors else ""))
    sign = 1.0 if mode == "min" else -1.0
    rows.sort(key=lambda r: (r.best_value is None, sign * (r.best_value or 0.0), not r.status.startswith("complete"), r.trial))
    best = rows[0]
    best_raw = validate_model(
        AppConfig, trial_config(base_raw, best.values, name_pattern), "best trial"
    ).resolved_dict()
    best_path, table = _write_outputs(directory, sweep, keys, rows, best, best_raw, metric_key, command)
    return SweepOutcome(directory=directory, rows=rows, best=best, best_config=best_path, table=table)
