"""The sweep's driver: the splits made and preprocessed once for every trial, one Tune
`Tuner` over the space (ASHA or FIFO), and the results written where a person reads
them.

Outputs, in `<storage.root>/sweeps/<name>/` (`SweepLayout`): `results.csv` and
`results.md` (one row per trial, best first), `best.yaml` (the best trial's resolved
config, a preset), `sweep.json` (the spec, the trials, the best) and `logs/sweep.log`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from ray_app.config import AppConfig, validate_config, validate_model
from ray_app.errors import UserError
from ray_app.runs import Run
from ray_app.sweep.space import SweepConfig, sweep_name_pattern, trial_config
from ray_app.sweep.trial import sweep_trial

TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved by a trial's driver function


@dataclass(frozen=True)
class SweepLayout:
    """A sweep's directory: its shared splits, Tune's storage, the results."""

    root: Path

    @classmethod
    def for_config(cls, cfg: AppConfig, name: str) -> SweepLayout:
        return cls(Path(cfg.storage.root) / "sweeps" / name)

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "sweep.log"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def best_config(self) -> Path:
        return self.root / "best.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "sweep.json"


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


@dataclass(frozen=True)
class SweepPlan:
    """What the driver derives from the config and the space before starting."""

    cfg: AppConfig
    base_raw: dict[str, Any]
    sweep: SweepConfig
    layout: SweepLayout

    @property
    def keys(self) -> list[str]:
        return list(self.sweep.space)

    @property
    def metric_key(self) -> str:
        return f"val_select/{self.sweep.metric or self.cfg.training.early_stopping.metric}"

    @property
    def mode(self) -> str:
        return "min" if self.metric_key.endswith("/loss") else "max"

    @property
    def name_pattern(self) -> str:
        return sweep_name_pattern(self.cfg.name_pattern, self.keys)

    def max_epochs(self) -> int:
        epochs = self.sweep.space.get("training.epochs")
        return max([int(v) for v in epochs.probe_values()] if epochs is not None else [self.cfg.training.epochs])

    def concurrency(self) -> int:
        """Trials at once: as set, else as many as the cluster's CPUs hold."""
        import ray

        if self.sweep.max_concurrent_trials:
            return self.sweep.max_concurrent_trials
        per_trial = self.cfg.scaling.num_workers * self.cfg.scaling.cpus_per_worker
        return max(1, math.floor(ray.cluster_resources().get("CPU", 1.0) / per_trial))

    def trial_run(self, values: dict[str, Any]) -> Run:
        return Run.for_config(validate_config(trial_config(self.base_raw, values, self.name_pattern), "sweep trial"))


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
    layout: SweepLayout
    rows: list[TrialRow]
    best: TrialRow
    table: str

    @property
    def directory(self) -> Path:
        return self.layout.root

    @property
    def best_config(self) -> Path:
        return self.layout.best_config


def run_sweep(
    cfg: AppConfig, base_raw: dict[str, Any], sweep: SweepConfig, name: str, command: str,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run the sweep on the connected Ray; write and return the results."""
    plan = SweepPlan(cfg, base_raw, sweep, SweepLayout.for_config(cfg, name))
    plan.layout.root.mkdir(parents=True, exist_ok=True)
    concurrency = plan.concurrency()
    echo(f"sweep {name}: {sweep.num_samples} sample(s) of {', '.join(plan.keys)}; ranking by {plan.metric_key} "
         f"({plan.mode}); {sweep.scheduler.kind}, up to {concurrency} trial(s) at once")
    results = _tuner(plan, concurrency, echo).fit()
    rows = [_trial_row(plan, index, result) for index, result in enumerate(results)]
    _mark_stopped(rows, plan)
    if not any(r.best_value is not None for r in rows):
        errors = [str(r.error) for r in results if r.error is not None]
        raise UserError(f"sweep {name}: no trial reported a {plan.metric_key}"
                        + (f"; first error: {errors[0]}" if errors else ""))
    sign = 1.0 if plan.mode == "min" else -1.0
    rows.sort(key=lambda r: (r.best_value is None, sign * (r.best_value or 0.0), not r.status.startswith("complete"),
                             r.trial))
    table = _write_outputs(plan, rows, command)
    return SweepOutcome(layout=plan.layout, rows=rows, best=rows[0], table=table)


def _tuner(plan: SweepPlan, concurrency: int, echo: Callable[[str], None]) -> tune.Tuner:
    """The splits written and preprocessed once, shared by every trial, and the Tuner."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ray_app.stages.context import StageContext
    from ray_app.stages.splits import write_shared_splits
    from ray_app.stages.train import prepare_training_data

    ctx = StageContext.for_config(plan.cfg)
    ctx.splits = write_shared_splits(plan.cfg, plan.layout.splits_dir)
    plan.layout.locks_dir.mkdir(exist_ok=True)
    max_epochs = plan.max_epochs()
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_epochs,
        grace_period=min(plan.sweep.scheduler.grace_period, max_epochs),
        reduction_factor=plan.sweep.scheduler.reduction_factor,
        # A trial at its last epoch must not be stopped: the stop would kill it before
        # it saves its model and exports its logits.
        stop_last_trials=False,
    ) if plan.sweep.scheduler.kind == "asha" else FIFOScheduler()
    trainable = tune.with_parameters(
        sweep_trial, base_raw=plan.base_raw, name_pattern=plan.name_pattern,
        splits_dir=str(ctx.splits.splits_dir.resolve()), prepared=prepare_training_data(ctx),
        working_dir=str(Path.cwd()), lock_dir=str(plan.layout.locks_dir.resolve()),
    )
    return tune.Tuner(
        # The trial function only drives its TorchTrainer, whose workers hold the CPUs:
        # it asks for no CPU (a CPU per trial would starve the workers on a small
        # machine) and concurrency is bounded by the search algorithm instead. Tune
        # needs some resource in the request; a little memory is honest.
        tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}),
        param_space={k: dim.to_tune() for k, dim in plan.sweep.space.items()},
        tune_config=tune.TuneConfig(
            metric=plan.metric_key, mode=plan.mode, scheduler=scheduler, num_samples=plan.sweep.num_samples,
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=plan.sweep.search_seed),
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(plan.layout.root.resolve()), verbose=0,
            callbacks=[SweepProgress(echo, plan.metric_key,
                                     lambda config: plan.trial_run({k: config.get(k) for k in plan.keys}).name)],
        ),
    )


def _trial_row(plan: SweepPlan, index: int, result: Any) -> TrialRow:
    values = {k: result.config.get(k) for k in plan.keys}
    run = plan.trial_run(values)
    frame = result.metrics_dataframe
    history = frame.to_dict("records") if frame is not None and len(frame) else []
    if result.error is not None:
        status = f"error: {type(result.error).__name__}"
    elif run.stage_info("train").get("status") == "complete":
        planned = int(values.get("training.epochs") or plan.cfg.training.epochs)
        status = "complete" if len(history) >= planned else "complete (early stopping)"
    else:
        status = "stopped by ASHA"  # a trial FIFO never stops either completes or errors
    scored = [r for r in history if plan.metric_key in r]
    best = (min if plan.mode == "min" else max)(scored, key=lambda r: r[plan.metric_key]) if scored else None
    return TrialRow(
        trial=index, run=run.name, values=values, status=status, epochs_run=len(history),
        best_epoch=None if best is None else int(best["epoch"]),
        best_value=None if best is None else float(best[plan.metric_key]),
    )


def _mark_stopped(rows: list[TrialRow], plan: SweepPlan) -> None:
    """Runs ASHA stopped never left their train stage: record why, so `runs list` says so."""
    from ray_app.runlog import LogSink

    for row in rows:
        if row.status.startswith("stopped"):
            stopped = plan.trial_run(row.values)
            reason = f"{row.status} after {row.epochs_run} epoch(s)"
            stopped.mark_stage("train", "stopped", reason)
            LogSink(stopped.log_path).write(f"{reason}: the error above is the scheduler ending the trial", "train")


def _write_outputs(plan: SweepPlan, rows: list[TrialRow], command: str) -> str:
    """results.csv, results.md, best.yaml and sweep.json; returns the results table."""
    layout, keys, metric_key, best = plan.layout, plan.keys, plan.metric_key, rows[0]
    header = ["trial", *keys, "epochs", f"best {metric_key}", "best epoch", "status", "run"]
    with layout.results_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(row.table_cells(keys) for row in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.table_cells(keys)) + " |" for row in rows]
    table = "\n".join(lines)
    layout.results_md.write_text(f"# sweep {layout.root.name}\n\n`{command}`\n\n{table}\n")
    best_raw = validate_model(AppConfig, trial_config(plan.base_raw, best.values, plan.name_pattern),
                              "best trial").resolved_dict()
    layout.best_config.write_text(
        f"# ray-app run {layout.best_config}\n"
        f"# Best trial of sweep {layout.root.name}: {metric_key}={best.best_value:.4f} at epoch "
        f"{best.best_epoch} (run {best.run}).\n"
        + yaml.safe_dump(best_raw, sort_keys=False)
    )
    summary = {"command": command, "spec": plan.sweep.model_dump(mode="json"), "metric": metric_key,
               "trials": [asdict(row) for row in rows], "best": asdict(best)}
    layout.summary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return table
