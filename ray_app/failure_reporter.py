"""`FailureReporter`: on Ray Train's controller, one event per worker failure, and Ray's
own account of it moved from the console into the run's log.

Ray Train runs its control loop in a controller actor, whose output Ray forwards to the
driver. There its failure policy logs each failure (`[FailurePolicy] RETRY`, the whole
`WorkerGroupError`, its traceback) and the torch backend's shutdown of the broken group
logs another traceback: several paragraphs per failure, all of them details.
`FailureReporter` is a Ray Train `UserCallback`, so it runs on that controller:

- `after_report` keeps the latest reported checkpoint, the one Ray Train hands to a
  restarted worker group (`ray.train.get_checkpoint()`), hence the epoch it resumes from;
- `after_exception` gets the failed workers' exceptions from Ray Train when a poll finds
  them, before the failure policy decides, counts the failure against the run's own
  `FailureConfig` as the policy does, and appends an event (`ray_app.train_failures`)
  that the console shows as one line;
- on its first call it adds a filter to the console handler Ray Train configured on its
  `ray.train` logger, so the failure loggers' records stop reaching the driver, and a
  handler that writes them (with tracebacks) to the run's log instead.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import ray.train
from ray.exceptions import RayActorError

from ray_app.runlog import LogSink, SinkHandler
from ray_app.train_failures import append_failure

# The loggers of Ray Train's controller that tell of a worker failure at length: the
# failure policy's decision (the whole error, then its traceback) and the backend's
# shutdown of the broken group (a traceback that Ray itself calls expected). Their
# records are the details of a failure: the run's log keeps them, the console does not.
RAY_FAILURE_LOGGERS = (
    "ray.train.v2._internal.execution.failure_handling",
    "ray.train.v2._internal.callbacks.backend_setup",
)
# The logger Ray Train configures on its controller, a console handler among its handlers.
RAY_TRAIN_LOGGER = "ray.train"

# Ray's text of a dead worker carries the cause of its exit after this label.
_EXIT_DETAIL = re.compile(r"Worker exit detail: (?P<detail>.+?)(?:\.(?:\s|$)|$)", re.DOTALL)
_TRACEBACK = "Traceback (most recent call last)"


def root_error(error: BaseException) -> BaseException:
    """The error behind a worker's failure: Ray Train wraps a dead worker's error in the
    error of the health check that found it."""
    return getattr(error, "health_check_failure", None) or error


def is_death(error: BaseException) -> bool:
    """Whether the worker's process died (rather than its training function raising)."""
    return isinstance(root_error(error), RayActorError)


def is_preemption(error: BaseException) -> bool:
    """Whether a node preemption killed the worker: Ray Train charges those to their own
    budget (`max_preemption_failures`), not to `max_failures`."""
    cause = root_error(error)
    return isinstance(cause, RayActorError) and bool(getattr(cause, "preempted", False))


def short_reason(error: BaseException) -> str:
    """One phrase for why a worker failed: the first sentence of the exit detail Ray
    records for a dead worker, or the exception line of an error the training raised
    (Ray Train hands it over as its traceback's text)."""
    cause = root_error(error)
    text = str(cause).strip()
    if isinstance(cause, RayActorError):
        match = _EXIT_DETAIL.search(text)
        if match:
            return " ".join(match["detail"].split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(cause).__name__
    if lines[0].startswith(_TRACEBACK):
        return lines[-1]
    return lines[0] if isinstance(cause, RayActorError) else f"{type(cause).__name__}: {lines[0]}"


def describe_ranks(worker_exceptions: dict[int, BaseException]) -> str:
    """The failed ranks and why: the lowest rank's reason, and how many others failed."""
    ranks = sorted(worker_exceptions)
    first = f"rank {ranks[0]}: {short_reason(worker_exceptions[ranks[0]])}"
    return first if len(ranks) == 1 else f"{first}; {len(ranks) - 1} more rank(s) failed"


class _NotOnConsole(logging.Filter):
    """Keeps the records of Ray Train's failure loggers off the handler it guards."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(RAY_FAILURE_LOGGERS)


class FailureReporter(ray.train.UserCallback):
    """Tells of each worker failure once (see the module's docstring).

    `failures_file` and `log_file` are the run's absolute paths (`Run.train.failures`,
    `Run.log_path`): the controller runs on the driver's node, and a cluster run keeps
    its run directory on shared storage anyway. `keep_ray_records` (`--verbose`) leaves
    Ray's records on Ray's console too, which the driver then mirrors and logs."""

    def __init__(self, failures_file: str, log_file: str, keep_ray_records: bool = False) -> None:
        self.failures_file, self.log_file, self.keep_ray_records = failures_file, log_file, keep_ray_records
        # Failures seen so far per budget, counted as Ray Train's failure policy counts them.
        self.failures = {"worker": 0, "preemption": 0}
        self.resume_epoch: int | None = None  # the 1-based epoch of the latest reported checkpoint
        self.checkpoint_path: str | None = None
        self._records_moved = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Remember the latest checkpoint: a restarted group resumes from it."""
        self.move_ray_failure_records()
        if checkpoint is not None and metrics and "epoch" in metrics[0]:
            self.resume_epoch = int(metrics[0]["epoch"]) + 1
            self.checkpoint_path = checkpoint.path

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, BaseException]) -> None:
        """One event per failure: Ray Train calls this when a poll finds failed workers,
        once per failure (the group is then torn down), before its policy decides."""
        self.move_ray_failure_records()
        if not worker_exceptions:
            return
        preemption = any(is_preemption(error) for error in worker_exceptions.values())
        budget = "preemption" if preemption else "worker"
        self.failures[budget] += 1
        limit = self.allowed_failures(run_context, budget)
        append_failure(Path(self.failures_file), {
            "time": time.time(),
            "failure": self.failures[budget],
            "max_failures": limit,
            "preemption": preemption,
            "retry": limit < 0 or self.failures[budget] <= limit,
            "died": any(is_death(error) for error in worker_exceptions.values()),
            "ranks": sorted(worker_exceptions),
            "reason": describe_ranks(worker_exceptions),
            "resume_epoch": self.resume_epoch,
            "checkpoint": self.checkpoint_path,
        })

    @staticmethod
    def allowed_failures(run_context: Any, budget: str) -> int:
        """The restarts the run's own FailureConfig allows for `budget` (-1: unlimited)."""
        config = run_context.get_run_config().failure_config
        if budget == "preemption":
            return int(getattr(config, "max_preemption_failures", -1))
        return int(config.max_failures)

    def move_ray_failure_records(self) -> None:
        """Once, on the controller: Ray Train's failure records go to the run's log, with
        their tracebacks, and no longer through the console handler of its `ray.train`
        logger, whose output Ray forwards to the driver's console. (Not at construction:
        the callback is unpickled before Ray Train configures that logger.)"""
        if self._records_moved or self.keep_ray_records:
            return
        self._records_moved = True
        for handler in logging.getLogger(RAY_TRAIN_LOGGER).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(_NotOnConsole())
        sink = LogSink(Path(self.log_file))
        sink.stage = "train"
        handler = SinkHandler(sink)
        for name in RAY_FAILURE_LOGGERS:
            logging.getLogger(name).addHandler(handler)
