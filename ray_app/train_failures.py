"""Worker failures during training, told in one line each: the event format.

When a Ray Train worker dies (or its training function raises), Ray Train's controller
restarts the worker group from the latest checkpoint, up to `scaling.max_failures`
times. Ray tells of each failure at length: the failure policy's decision with the whole
error and its traceback, the backend's failed shutdown with another traceback, the
raylet's notice of the dead worker. A person watching the console needs one line:

    worker died (rank 0: <Ray's exit detail>); resuming from epoch 1's checkpoint, failure 1 of 1

The controller's `ray_app.failure_reporter.FailureReporter` appends one JSON event per
failure to the run's `train/failures.jsonl` (and moves Ray's own text into the run's
log); the console's training watcher (`ray_app.progress.TrainProgress`) reads the
events and shows each as the line above. This module is the format between them, and
imports no Ray: the console must not load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def failure_line(event: dict[str, Any]) -> str:
    """The console's one line for a failure event."""
    what = "worker died" if event["died"] else "worker failed"
    limit = "unlimited" if event["max_failures"] < 0 else str(event["max_failures"])
    count = f"failure {event['failure']} of {limit}" + (" (preemptions)" if event.get("preemption") else "")
    if not event["retry"]:
        return f"{what} ({event['reason']}); failure {event['failure']}, over the {limit} restart(s) allowed: training stops"
    if event["resume_epoch"] is None:
        return f"{what} ({event['reason']}); restarting from the start (no checkpoint yet), {count}"
    return f"{what} ({event['reason']}); resuming from epoch {event['resume_epoch']}'s checkpoint, {count}"


def append_failure(path: Path, event: dict[str, Any]) -> None:
    """Add one event: a whole line in one write, so a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(event, sort_keys=True) + "\n")


def read_failures(path: Path) -> list[dict[str, Any]]:
    """The failure events written so far, oldest first (a line still being written is
    skipped until it is whole)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
