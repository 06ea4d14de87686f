"""What a training run leaves for its watchers while it runs: the metrics history (one
row per epoch, as JSON lines and CSV) and rank 0's progress within the epoch. The
paths come from the caller (the run's layout); this module owns the formats."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HistoryFiles:
    """Where one training run writes its history and progress (absolute paths, so a
    worker on another node finds them on the shared runs root)."""

    metrics_jsonl: str
    metrics_csv: str
    progress: str


def _replace(path: Path, write: Any) -> None:
    """Write through a hidden sibling and rename: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def write_metrics_history(history: list[dict[str, Any]], files: HistoryFiles) -> None:
    """One row per epoch, as JSON lines and CSV (rewritten whole, so a resumed run
    never holds an epoch twice)."""
    _replace(Path(files.metrics_jsonl),
             lambda tmp: tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history)))
    columns = list(dict.fromkeys(key for row in history for key in row))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    _replace(Path(files.metrics_csv), write_csv)


class ProgressFile:
    """Rank 0's position inside the current epoch, for the console's progress bar and
    anyone watching the run: rewritten atomically, at most every `interval_s`, so a
    step costs nothing measurable."""

    def __init__(self, path: Path, epochs: int, steps: int, interval_s: float = 0.5) -> None:
        self.path = path
        self.epochs, self.steps, self.interval_s = epochs, steps, interval_s
        self.epoch_started = time.time()
        self.last_write = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch_started = time.time()
        self.update(epoch, 0, None, force=True)

    def update(self, epoch: int, step: int, loss: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.interval_s:
            return
        self.last_write = now
        state = {
            "epoch": epoch, "epochs": self.epochs, "step": step, "steps": self.steps, "loss": loss,
            "epoch_started": self.epoch_started, "updated": time.time(),
        }
        _replace(self.path, lambda tmp: tmp.write_text(json.dumps(state)))
