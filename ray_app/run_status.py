"""A run as someone watching it sees it: its status, from the stages its metadata
records (and, for a stage still marked running, whether the process that ran it is
alive), and its metrics history, read from the end of the file so that following a
long run costs only the new rows. The control plane's index and streams, and the CLI,
read runs through these."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from ray_app.runlog import END_MARK, START_MARK, lines_backwards, tail_lines
from ray_app.stages import STAGE_NAMES

# --- status ---------------------------------------------------------------------------

# What a run's status can be: the states of a Ray job, plus `incomplete` for a run whose
# stages were run only in part (e.g. `ray-app train` alone).
RUN_STATUSES = ("pending", "running", "succeeded", "failed", "stopped", "incomplete")
_START = re.compile(r"==== start: .* · pid (\d+) on (\S+) ====")


def _writer_gone(log_file: Path) -> int | None:
    """The pid of the last command that wrote the run's log, when it ran on this host,
    never wrote its end line, and is no longer alive; else None."""
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
    if all(statuses.get(stage) == "complete" for stage in STAGE_NAMES):
        return "succeeded", ""
    return "incomplete", ""


def read_metrics(
    path: Path, limit: int, order: str = "asc", since_epoch: int | None = None, keys: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of a run's `metrics.jsonl`: those after `since_epoch` when given, at most
    `limit` of them — the oldest first (`asc`) or the newest first (`desc`).

    Newest-first and `since_epoch` reads go backwards from the end of the file and stop
    as soon as they have what was asked for, so following a long run costs the new rows
    only, never a whole read. `keys` keeps only those columns (and `epoch`)."""
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
