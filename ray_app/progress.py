"""What the console shows while a stage works: a ticking clock, or for training a live
bar per epoch followed from the run's own files (one plain line per finished epoch
when the console is not a terminal)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ray_app.train_failures import failure_line, read_failures

if TYPE_CHECKING:
    from ray_app.runs import TrainLayout


class Screen(Protocol):
    """What the watchers need of a console (`ray_app.console.Console`)."""

    out: TextIO
    interactive: bool

    def status(self, text: str) -> None: ...

    def clear_line(self) -> None: ...

    def write_line(self, text: str) -> None: ...

    def log(self, text: str) -> None: ...


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def terminal_width(stream: TextIO) -> int:
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


class Ticker(threading.Thread):
    """The transient `running… 0:12` line of a stage without progress of its own."""

    def __init__(self, console: Screen, prefix: str, started: float) -> None:
        super().__init__(daemon=True, name="console-ticker")
        self.console, self.prefix, self.started = console, prefix, started
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(0.5):
            self.console.status(f"{self.prefix} running… {duration(time.monotonic() - self.started)}")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)


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
    within the epoch), `metrics.jsonl` (finished epochs) and Ray Train's controller's
    `failures.jsonl` (worker failures) — wherever the workers run, as long as the run
    directory is shared storage (which a cluster run needs anyway).

    On a terminal each epoch gets a live tqdm bar (epoch, steps, elapsed and ETA, loss,
    the val_select metric) that stays once the epoch ends; otherwise one plain line per
    finished epoch. Each worker failure is one line (`ray_app.train_failures`), in both."""

    def __init__(self, console: Screen, files: TrainLayout, started: float, poll_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="train-progress")
        self.console, self.files, self.started, self.poll_s = console, files, started, poll_s
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
        self.failures_shown = 0

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
        for event in self._new_failures():
            self._show_failure(event)
        progress = self._fresh_json(self.files.progress)
        if progress is None:
            if not self.shown and self.bar is None:
                self.console.status(f"  starting workers… {duration(time.monotonic() - self.started)}")
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
        path = self.files.metrics
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

    def _new_failures(self) -> list[dict[str, Any]]:
        """Failure events not shown yet (the file only grows while the stage runs)."""
        path = self.files.failures
        try:
            if path.stat().st_mtime < self.not_before:
                return []
        except OSError:
            return []
        events = read_failures(path)
        fresh = events[self.failures_shown:]
        self.failures_shown = len(events)
        return fresh

    def _show_failure(self, event: dict[str, Any]) -> None:
        """One line, after the bar of the epoch the failure cut short (a restarted group
        draws that epoch's bar again)."""
        line = failure_line(event)
        self.console.log(line)
        self._close_bar()
        self.console.clear_line()
        self.console.write_line(f"  {line}")

    def _open_bar(self, epoch: int, steps: int) -> None:
        from tqdm import tqdm

        self.console.clear_line()
        of = f"/{self.epochs}" if self.epochs else ""
        self.bar = tqdm(
            total=max(1, steps), desc=f"  epoch {epoch + 1}{of}", file=self.console.out, leave=True,
            ncols=min(terminal_width(self.console.out), 120), mininterval=0.2, unit="step",
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
        self.console.log(epoch_line(row, self.epochs).strip())
        if not self.console.interactive:
            self.console.write_line(epoch_line(row, self.epochs))
            return
        if self.bar_epoch != epoch:
            self._close_bar()
            self._open_bar(epoch, 1)
        self.bar.n = self.bar.total
        self._set_postfix(f"loss {row['train/loss']:.4f}", metric)
        self._close_bar()
