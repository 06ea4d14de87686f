"""What a person sees while a command works: stage lines, live training progress, the
summary — and nothing of Ray's internals, which go to the run's log (`ray_app.runlog`).

`open_console` frames a command: it captures all output into the run's log, yields a
`Console` for what belongs on screen, and records the outcome (and, on failure, the
error with its traceback) in the log. `Console.stage` wraps one stage: a transient
status line on a terminal, a live progress bar per epoch during training (one plain
line per epoch when not a terminal), and one line when the stage ends.

`--verbose` mirrors everything captured to the console as well. Either way, warnings a
user must act on (a resource request no node can satisfy, memory pressure, a dead
worker, our own packages' warnings) reach the console's stderr — except that while
training runs, a dead worker is Ray Train's to handle and the training watcher's to
tell, in one line per failure (`ray_app.train_failures`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ray_app.errors import UserError
from ray_app.insights.reference import advice_when_behind
from ray_app.progress import Ticker, TrainProgress, terminal_width
from ray_app.runlog import END_MARK, START_MARK, LogSink, capture_output
from ray_app.splits import SplitReader

if TYPE_CHECKING:
    from ray_app.runs import Run


class StageView(Protocol):
    """What the console shows of a stage (`ray_app.stages.Stage`)."""

    name: str
    progress: str

    def summary(self, info: dict[str, Any]) -> str: ...

# Our own packages: their log records go to the run log; WARNING and above also to the
# console.
OWN_LOGGERS = ("ray_app", "trainers", "calibration", "serve")

# Lines from Ray (or anything else captured) that mean the run is stuck or losing work:
# a person must see them even when the console is quiet.
ACTIONABLE_PATTERNS = (
    r"cannot be scheduled",
    r"No available node types can fulfill",
    r"[Ii]nsufficient resources",
    r"[Oo]ut of memory|OutOfMemoryError|memory pressure|running low on memory",
    r"[Nn]ode .* (?:died|was terminated|is dead)",
    r"[Ss]pilling objects|[Oo]bject store is full",
    r"No space left on device",
)
# A dead worker: actionable too, unless something else tells of it (`ActionableRules`).
WORKER_DEATH_PATTERNS = (r"[Ww]orker (?:died|crashed)|A worker died or was killed",)
_ACTIONABLE = re.compile("|".join(ACTIONABLE_PATTERNS))
_WORKER_DEATH = re.compile("|".join(WORKER_DEATH_PATTERNS))


def is_actionable(line: str, worker_deaths_told: bool = False) -> bool:
    """Whether a captured line is a warning a person must see. `worker_deaths_told`:
    worker deaths are told on the console another way, so Ray's lines about them are not."""
    return bool(_ACTIONABLE.search(line)) or (not worker_deaths_told and bool(_WORKER_DEATH.search(line)))


class ActionableRules:
    """Picks the captured lines that reach the console's stderr (`is_actionable`).

    While training runs, Ray Train restarts the worker group after a worker dies and the
    training watcher tells of each failure in one line; the raylet's notice of the same
    death (and Ray's other text about it) then stays in the run's log."""

    def __init__(self) -> None:
        self.worker_deaths_told = False

    def __call__(self, line: str) -> bool:
        return is_actionable(line, self.worker_deaths_told)


class Console:
    """Lines for a person: written to the console and to the run log."""

    def __init__(self, out: TextIO, err: TextIO, sink: LogSink | None, interactive: bool, verbose: bool,
                 rules: ActionableRules | None = None) -> None:
        self.out, self.err, self.sink = out, err, sink
        self.interactive = interactive  # a terminal, and not mirroring the log
        self.verbose = verbose
        self.rules = rules or ActionableRules()  # the ones the capture of this command applies
        self._lock = threading.Lock()
        self._transient = ""

    @classmethod
    def silent(cls) -> Console:
        """A console that shows nothing (library use without a terminal)."""
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the console
        return cls(devnull, devnull, None, interactive=False, verbose=False)

    def print(self, text: str = "") -> None:
        with self._lock:
            self._clear_transient()
            self.out.write(text + "\n")
            self.out.flush()
        if self.sink is not None:
            self.sink.write(text)

    def status(self, text: str) -> None:
        """A line that the next one replaces (terminal only; never logged)."""
        if not self.interactive:
            return
        with self._lock:
            width = max(20, terminal_width(self.out) - 1)
            self._transient = text[:width]
            self.out.write("\r" + self._transient + "\x1b[K")
            self.out.flush()

    def _clear_transient(self) -> None:
        if self._transient:
            self.out.write("\r\x1b[K")
            self._transient = ""

    def clear_line(self) -> None:
        """Remove the transient status line (before something draws its own)."""
        with self._lock:
            self._clear_transient()

    def write_line(self, text: str) -> None:
        """A line on the console only (the caller logs it its own way)."""
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def log(self, text: str) -> None:
        """A line in the run's log only."""
        if self.sink is not None:
            self.sink.write(text)

    def set_stage(self, stage: str) -> None:
        if self.sink is not None:
            self.sink.stage = stage

    @contextmanager
    def stage(self, number: int, total: int, stage: StageView, run: Run, heading: str | None = None) -> Iterator[None]:
        """One stage: live status meanwhile, one line at the end (a heading first when
        the stage prints lines of its own, as training does per epoch)."""
        prefix = f"[{number}/{total}] {stage.name:<9}"
        self.set_stage(stage.name)
        started = time.monotonic()
        if heading:
            self.print(f"{prefix} {heading}")
        training = stage.progress == "epochs"
        watcher: Ticker | TrainProgress = (
            TrainProgress(self, run.train, started) if training else Ticker(self, prefix, started)
        )
        # The training watcher tells of each worker failure itself (ray_app.train_failures).
        self.rules.worker_deaths_told = training
        watcher.start()
        try:
            yield
        except BaseException as exc:
            watcher.stop()
            reason = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            self.print(f"{prefix} {reason} after {time.monotonic() - started:.1f}s")
            raise
        finally:
            self.rules.worker_deaths_told = False
        watcher.stop()
        self.set_stage("-")
        info = run.stage_info(stage.name)
        seconds = info.get("seconds", time.monotonic() - started)
        summary = stage.summary(info)
        self.print(f"{prefix} done in {seconds:.1f}s" + (f" · {summary}" if summary else ""))

    def skipped(self, number: int, total: int, stage: StageView) -> None:
        self.print(f"[{number}/{total}] {stage.name:<9} complete for this config, skipped")


# --- framing a command ---------------------------------------------------------------------


class _OwnRecords(logging.Handler):
    """Our packages' log records: all into the run log, warnings onto the console too."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.console.sink is not None:
            self.console.sink.write(f"{record.levelname} {record.name}: {message}")
        shown = f"{record.levelname} {record.name}: {message}" if self.console.verbose else (
            f"warning: {message}" if record.levelno >= logging.WARNING else None
        )
        if shown is not None:
            with self.console._lock:
                self.console._clear_transient()
                self.console.err.write(shown + "\n")
                self.console.err.flush()


@contextmanager
def open_console(log_file: Path | None, verbose: bool = False, ready: Callable[[], bool] = lambda: True,
                 argv: list[str] | None = None) -> Iterator[Console]:
    """Frame one command: capture its output into `log_file` (appended), yield the
    console, and record how the command ended — with the error and its traceback when
    it failed, so the log explains a failure on its own."""
    sink = LogSink(log_file, ready) if log_file is not None else None
    command = shlex.join(["ray-app", *(sys.argv[1:] if argv is None else argv)])
    if sink is not None:
        sink.write(f"{START_MARK}: {command} · pid {os.getpid()} on {socket.gethostname()} ====")
    # Ray forwards worker output to the driver; deduplicated, lines would be missing
    # from the log. Read by Ray when it is imported, which the commands do lazily.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = time.monotonic()
    if sink is None:
        interactive = sys.stdout.isatty() and not verbose
        yield Console(sys.stdout, sys.stderr, None, interactive, verbose)
        return
    rules = ActionableRules()
    with capture_output(sink, mirror=verbose, actionable=rules) as (out, err):
        interactive = out.isatty() and not verbose
        console = Console(out, err, sink, interactive, verbose, rules)
        handler = _OwnRecords(console)
        loggers = [logging.getLogger(name) for name in OWN_LOGGERS]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
        try:
            yield console
        except BaseException as exc:
            elapsed = time.monotonic() - started
            if isinstance(exc, UserError):
                sink.write(f"error: {exc}", stage="error")
                outcome = f"failed (exit {exc.exit_code})"
            elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
                outcome = "interrupted"
            else:
                sink.write("".join(traceback.format_exception(exc)).rstrip(), stage="error")
                outcome = "failed (exit 1)"
            sink.write(f"{END_MARK}: {outcome} after {elapsed:.1f}s ====", stage="-")
            raise
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)
        sink.write(f"{END_MARK}: exit 0 after {time.monotonic() - started:.1f}s ====", stage="-")


# --- what a command shows when it is done ---------------------------------------------------


def splits_lines(summary: dict[str, Any], path: Path) -> list[str]:
    """The splits of a run (`splits.json` at `path`): rows per split and per class,
    and the duplicates kept within one split."""
    lines = [f"splits of {summary['num_rows_used']} rows ({len(summary['label_names'])} classes, seed {summary['seed']}):"]
    for split, info in summary["splits"].items():
        counts = info["class_counts"].values()
        lines.append(f"  {split:<11} {info['count']:>7}  per class {min(counts)}..{max(counts)}")
    dup = summary["duplicates"]
    if dup["duplicate_groups"]:
        lines.append(
            f"  duplicates: {dup['duplicate_rows']} rows in {dup['duplicate_groups']} groups, "
            f"kept within one split ({dup['conflicting_label_groups']} with conflicting labels)"
        )
    return [*lines, f"  -> {path}"]


def training_lines(run: Run, info: dict[str, Any]) -> list[str]:
    best = ", ".join(f"{k}={v:.4f}" for k, v in info["best"].items())
    lines = [f"done in {info['seconds']:.1f}s: {info['epochs_run']} epoch(s), best epoch {info['best_epoch'] + 1} ({best})"]
    if info.get("resumed_at"):
        lines.append(f"  resumed after worker failure at epoch(s) {info['resumed_at']}")
    return [
        *lines,
        f"  metrics:     {run.train.metrics_csv}",
        f"  model:       {run.train.model_dir}",
        f"  predictions: {run.train.predictions_dir} (val_calib, val_test logits)",
    ]


def calibration_lines(run: Run, info: dict[str, Any]) -> list[str]:
    return [
        f"run {run.name}: calibrated on val_calib in {info['seconds']:.1f}s",
        f"  temperature {info['temperature']:.4f}: ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f}",
        f"  policy:  {info['policy']} ({run.calibration.policy})",
        f"  report:  {run.calibration.report}",
    ]


def _policy_line(policy: dict[str, Any]) -> str:
    accepted = "-" if policy["accepted_accuracy"] is None else f"{policy['accepted_accuracy']:.4f}"
    return (f"coverage {policy['coverage']:.3f}, accepted accuracy {accepted}, "
            f"assist {policy['assist_rate']:.3f}, abstain {policy['abstain_rate']:.3f}")


def evaluation_lines(run: Run, metrics: dict[str, Any]) -> list[str]:
    policy = metrics["policy"]
    return [
        f"run {run.name}: val_test ({metrics['n']} samples)",
        f"  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"NLL {metrics['calibrated']['nll']:.4f}  "
        f"ECE {metrics['uncalibrated']['ece']:.4f} -> {metrics['calibrated']['ece']:.4f}",
        f"  policy {policy['rule']}: {_policy_line(policy)}",
        f"  -> {run.evaluation}",
    ]


def insight_rows(run: Run) -> list[tuple[str, str]]:
    """The reference model against the run, and the epoch time estimated before
    training against the one measured, when the run recorded them."""
    rows = []
    insights = run.stage_info("insights")
    reference = insights.get("reference")
    if reference:
        rows.append(("linear reference", f"{reference['val_test_accuracy']:.4f} val_test accuracy ({reference['kind']}, "
                                         f"C={reference['C']:g}) vs {insights['model_accuracy']:.4f} for this run"))
        train, cfg = run.stage_info("train"), run.config()
        if cfg is not None and "epochs_run" in train:
            advice = advice_when_behind(insights["model_accuracy"], reference["val_test_accuracy"], cfg,
                                        train["epochs_run"], train["best_epoch"])
            if advice:
                rows.append(("to do", advice))
    timing = run.stage_info("train").get("epoch_seconds")
    if timing and timing.get("measured_median") is not None:
        rows.append(("epoch time", f"estimated {timing['estimated']:.2f}s, measured {timing['measured_median']:.2f}s "
                                   f"(median after the first epoch; x{timing['ratio']:.2f})"))
    if insights.get("status") == "complete" and not insights.get("disabled"):
        rows.append(("insights", f"{run.insights.report}"))
    return rows


def run_summary_lines(run: Run) -> list[str]:
    """The end of `ray-app run`: val_test results under the policy, the insights, the
    bundle and the command that serves it."""
    metrics = json.loads(run.evaluation.read_text())
    export = run.stage_info("export")
    policy = metrics["policy"]
    rows = [
        ("val_test accuracy", f"{metrics['accuracy']:.4f} (macro-F1 {metrics['macro_f1']:.4f}, n={metrics['n']})"),
        ("val_test ECE", f"{metrics['uncalibrated']['ece']:.4f} -> {metrics['calibrated']['ece']:.4f} after temperature"),
        (f"policy {policy['rule']}", _policy_line(policy)),
        *insight_rows(run),
        ("bundle", f"{export['bundle']} (verified; {export['model_version']})"),
        ("serve it", f"ray-app serve {export['bundle']}"),
    ]
    return ["", f"run {run.name}", *(f"  {label:<22} {value}" for label, value in rows)]


def runs_table_lines(runs: list[Run]) -> list[str]:
    lines = [f"{'run':<48} {'splits':<10} {'train':<10} {'best val_select':<24} created"]
    for run in runs:
        meta = run.metadata()
        stages = meta.get("stages", {})
        best = stages.get("train", {}).get("best", {})
        shown = ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in best.items() if "loss" not in k)
        lines.append(
            f"{run.name:<48} {stages.get('splits', {}).get('status', '-'):<10} "
            f"{stages.get('train', {}).get('status', '-'):<10} {shown or '-':<24} {meta.get('created', '-')}"
        )
    return lines


def run_detail_lines(run: Run, root: Path) -> list[str]:
    """`ray-app runs show`: the stages, the log, the splits and the metrics history."""
    meta = run.metadata()
    lines = [f"run {run.name} ({run.root})", f"  created {meta.get('created')}, config {meta.get('config_fingerprint')}"]
    for stage, info in meta.get("stages", {}).items():
        extra = f", error: {info['error']}" if info.get("error") else ""
        lines.append(f"  {stage:<8} {info.get('status')} ({info.get('seconds', '-')}s){extra}")
    log = run.log_path
    if log.is_file():
        lines.append(f"  logs     {log} ({log.stat().st_size:,} bytes): ray-app logs {run.name} --root {root} --tail 50")
    else:
        lines.append(f"  logs     none yet ({log})")
    splits = SplitReader(run.splits_dir)
    if splits.summary_path.is_file():
        lines += splits_lines(splits.summary(), splits.summary_path)
    if run.train.metrics.is_file():
        lines.append("  epoch  train/loss  val_select/loss  accuracy  macro_f1")
        for line in run.train.metrics.read_text().splitlines():
            row = json.loads(line)
            lines.append(
                f"  {row['epoch']:>5}  {row['train/loss']:>10.4f}  {row['val_select/loss']:>15.4f}"
                f"  {row['val_select/accuracy']:>8.4f}  {row['val_select/macro_f1']:>8.4f}"
            )
    return lines
