"""What a person sees while a command works: stage lines, live training progress, the
summary — and nothing of Ray's internals, which go to the run's log (`ray_app.runlog`).

`open_console` frames a command: it captures all output into the run's log, yields a
`Console` for what belongs on screen, and records the outcome (and, on failure, the
error with its traceback) in the log. `Console.stage` wraps one stage: a transient
status line on a terminal, a live progress bar per epoch during training (one plain
line per epoch when not a terminal), and one line when the stage ends.

`--verbose` mirrors everything captured to the console as well. Either way, warnings a
user must act on (a resource request no node can satisfy, memory pressure, a dead
worker, our own packages' warnings) reach the console's stderr.
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
from typing import Any, TextIO

from ray_app.config import SPLIT_NAMES
from ray_app.errors import UserError
from ray_app.runlog import END_MARK, START_MARK, LogSink, capture_output

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
    r"[Ww]orker (?:died|crashed)|A worker died or was killed",
    r"[Nn]ode .* (?:died|was terminated|is dead)",
    r"[Ss]pilling objects|[Oo]bject store is full",
    r"No space left on device",
)
_ACTIONABLE = re.compile("|".join(ACTIONABLE_PATTERNS))


def is_actionable(line: str) -> bool:
    return bool(_ACTIONABLE.search(line))


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Console:
    """Lines for a person: written to the console and to the run log."""

    def __init__(self, out: TextIO, err: TextIO, sink: LogSink | None, interactive: bool, verbose: bool) -> None:
        self.out, self.err, self.sink = out, err, sink
        self.interactive = interactive  # a terminal, and not mirroring the log
        self.verbose = verbose
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
            width = max(20, _terminal_width(self.out) - 1)
            self._transient = text[:width]
            self.out.write("\r" + self._transient + "\x1b[K")
            self.out.flush()

    def _clear_transient(self) -> None:
        if self._transient:
            self.out.write("\r\x1b[K")
            self._transient = ""

    def set_stage(self, stage: str) -> None:
        if self.sink is not None:
            self.sink.stage = stage

    @contextmanager
    def stage(self, number: int, total: int, stage: str, run: Any, heading: str | None = None) -> Iterator[None]:
        """One stage: live status meanwhile, one line at the end (a heading first when
        the stage prints lines of its own, as training does per epoch)."""
        prefix = f"[{number}/{total}] {stage:<9}"
        self.set_stage(stage)
        started = time.monotonic()
        if heading:
            self.print(f"{prefix} {heading}")
        watcher: threading.Thread | None
        if stage == "train":
            watcher = TrainProgress(self, Path(run.train_dir), started)
        else:
            watcher = _Ticker(self, prefix, started)
        watcher.start()
        try:
            yield
        except BaseException as exc:
            watcher.stop()  # type: ignore[attr-defined]
            reason = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            self.print(f"{prefix} {reason} after {time.monotonic() - started:.1f}s")
            raise
        watcher.stop()  # type: ignore[attr-defined]
        self.set_stage("-")
        info = run.stage_info(stage)
        seconds = info.get("seconds", time.monotonic() - started)
        summary = stage_summary(stage, info)
        self.print(f"{prefix} done in {seconds:.1f}s" + (f" · {summary}" if summary else ""))

    def skipped(self, number: int, total: int, stage: str) -> None:
        self.print(f"[{number}/{total}] {stage:<9} complete for this config, skipped")


def _terminal_width(stream: TextIO) -> int:
    """The console's width (fd 1 is the log pipe by now, so ask the console's own
    descriptor); a terminal that reports no size gets $COLUMNS or 100."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return int(os.environ.get("COLUMNS", "")) or 100
    except ValueError:
        return 100


class _Ticker(threading.Thread):
    """The transient `running… 0:12` line of a stage without progress of its own."""

    def __init__(self, console: Console, prefix: str, started: float) -> None:
        super().__init__(daemon=True, name="console-ticker")
        self.console, self.prefix, self.started = console, prefix, started
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(0.5):
            self.console.status(f"{self.prefix} running… {_duration(time.monotonic() - self.started)}")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)


def stage_summary(stage: str, info: dict[str, Any]) -> str:
    """The one-line result of a stage, from what it recorded in metadata.json."""
    try:
        if stage == "splits":
            counts = info["counts"]
            return f"{sum(counts.values())} rows: " + ", ".join(f"{k} {counts[k]}" for k in SPLIT_NAMES if k in counts)
        if stage == "train":
            best = info.get("best", {})
            shown = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in best.items() if not k.endswith("loss"))
            resumed = f" · resumed at epoch(s) {info['resumed_at']}" if info.get("resumed_at") else ""
            return f"{info['epochs_run']} epoch(s), best epoch {info['best_epoch'] + 1} (val_select {shown}){resumed}"
        if stage == "calibrate":
            return (f"T {info['temperature']:.3f}, ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f}, "
                    f"policy {info['policy']}")
        if stage == "evaluate":
            return f"val_test accuracy {info['accuracy']:.4f}, coverage {info['coverage']:.3f} under the policy"
        if stage == "insights":
            if info.get("disabled"):
                return "off (insights.enabled: false)"
            board = info["storyboard"]
            reference = info.get("reference")
            compared = (f", linear reference {reference['val_test_accuracy']:.4f} vs model {info['model_accuracy']:.4f}"
                        if reference else "")
            return (f"map of {info['map']['points']} points (pca), storyboard {board['confident_wrong']} confident "
                    f"wrong of {info['n']}{compared}")
        if stage == "export":
            return f"bundle verified, {info['model_version']}"
    except (KeyError, TypeError, ValueError):
        return ""
    return ""


# --- training progress -------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _val_select(row: dict[str, Any]) -> list[tuple[str, float]]:
    """The row's val_select metrics, loss first."""
    found = [(k.removeprefix("val_select/"), float(v)) for k, v in row.items() if k.startswith("val_select/")]
    return sorted(found, key=lambda kv: (kv[0] != "loss", kv[0]))


def epoch_line(row: dict[str, Any], epochs: int | None) -> str:
    """One finished epoch, as shown without a terminal (and kept in the log)."""
    of = f"/{epochs}" if epochs else ""
    val = " ".join(f"{name} {value:.4f}" for name, value in _val_select(row))
    return (f"  epoch {row['epoch'] + 1}{of}  loss {row['train/loss']:.4f}  val_select {val}  "
            f"({row['train/seconds']:.1f}s, {row['train/samples_per_s']:.0f} samples/s)")


class TrainProgress(threading.Thread):
    """Follows the training of a run from its files — rank 0's `progress.json` (step
    within the epoch) and `metrics.jsonl` (finished epochs) — wherever the workers run,
    as long as the run directory is shared storage (which a cluster run needs anyway).

    On a terminal each epoch gets a live tqdm bar (epoch, steps, elapsed and ETA, loss,
    the val_select metric) that stays once the epoch ends; otherwise one plain line per
    finished epoch."""

    def __init__(self, console: Console, train_dir: Path, started: float, poll_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="train-progress")
        self.console, self.train_dir, self.started, self.poll_s = console, train_dir, started, poll_s
        # Files of an earlier training of this run are still there until the new one
        # clears the train directory: only files written since this stage began count.
        self.not_before = time.time() - 1.0
        self._stopped = threading.Event()
        self.shown: set[int] = set()
        self.epochs: int | None = None
        self.bar: Any = None
        self.bar_epoch: int | None = None
        self.metrics_stamp: tuple[float, int] | None = None
        self.last_metric = ""

    def run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)
        self.poll()  # the last epochs, written just before the stage ended
        self._close_bar()

    def poll(self) -> None:
        for row in self._new_rows():
            self._finish_epoch(row)
        progress = self._fresh_json(self.train_dir / "progress.json")
        if progress is None:
            if not self.shown and self.bar is None:
                self.console.status(f"  starting workers… {_duration(time.monotonic() - self.started)}")
            return
        self.epochs = progress.get("epochs") or self.epochs
        epoch = int(progress["epoch"])
        if epoch in self.shown or not self.console.interactive:
            return
        if self.bar_epoch != epoch:
            self._close_bar()
            self._open_bar(epoch, int(progress["steps"]))
        self.bar.n = min(int(progress["step"]), self.bar.total)
        loss = progress.get("loss")
        self._set_postfix(None if loss is None else f"loss {loss:.4f}", self.last_metric)
        self.bar.refresh()

    def _set_postfix(self, *parts: str | None) -> None:
        self.bar.set_postfix_str(" · ".join(p for p in parts if p), refresh=False)

    def _fresh_json(self, path: Path) -> dict[str, Any] | None:
        try:
            if path.stat().st_mtime < self.not_before:
                return None
        except OSError:
            return None
        return _read_json(path)

    def _new_rows(self) -> list[dict[str, Any]]:
        path = self.train_dir / "metrics.jsonl"
        try:
            stat = path.stat()
        except OSError:
            return []
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self.metrics_stamp or stat.st_mtime < self.not_before:
            return []
        self.metrics_stamp = stamp
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("epoch") not in self.shown:
                rows.append(row)
        return rows

    def _open_bar(self, epoch: int, steps: int) -> None:
        from tqdm import tqdm

        with self.console._lock:
            self.console._clear_transient()
        of = f"/{self.epochs}" if self.epochs else ""
        self.bar = tqdm(
            total=max(1, steps), desc=f"  epoch {epoch + 1}{of}", file=self.console.out, leave=True,
            ncols=min(_terminal_width(self.console.out), 120), mininterval=0.2, unit="step",
            bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} · {elapsed}<{remaining}{postfix}",
        )
        self.bar_epoch = epoch

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.bar_epoch = None, None

    def _finish_epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        self.shown.add(epoch)
        metric = next((f"val_select {name} {value:.4f}" for name, value in _val_select(row) if name != "loss"), "")
        self.last_metric = metric
        if self.console.sink is not None:
            self.console.sink.write(epoch_line(row, self.epochs).strip())
        if not self.console.interactive:
            with self.console._lock:
                self.console.out.write(epoch_line(row, self.epochs) + "\n")
                self.console.out.flush()
            return
        if self.bar_epoch != epoch:
            self._close_bar()
            self._open_bar(epoch, 1)
        self.bar.n = self.bar.total
        self._set_postfix(f"loss {row['train/loss']:.4f}", metric)
        self._close_bar()


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
    with capture_output(sink, mirror=verbose, actionable=is_actionable) as (out, err):
        interactive = out.isatty() and not verbose
        console = Console(out, err, sink, interactive, verbose)
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
