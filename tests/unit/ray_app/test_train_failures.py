"""Worker failures during training: the event Ray Train's controller writes, the one line
the console shows for it, and what stays off the console. A real worker death is in
tests/integration/test_training.py (test_killed_worker_resumes_from_last_checkpoint)."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.exceptions import RayActorError

from ray_app.console import ActionableRules, Console
from ray_app.failure_reporter import RAY_FAILURE_LOGGERS, FailureReporter, describe_ranks, short_reason
from ray_app.progress import TrainProgress
from ray_app.runs import TrainLayout
from ray_app.train_failures import append_failure, failure_line, read_failures

DEAD = ("The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n\tpid: 7\n"
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
        "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) ...")
RAYLET = ("(raylet) A worker died or was killed while executing a task by an unexpected system error. Worker exit "
          "detail: ... (3) the worker crashed unexpectedly due to SIGSEGV or another unexpected error.")


def health_check_failure(cause: BaseException) -> Exception:
    """How Ray Train hands over a dead worker's error: wrapped by its health check."""
    error = RuntimeError("A worker health check failed.")
    error.health_check_failure = cause  # type: ignore[attr-defined]
    return error


def event(**changes: Any) -> dict[str, Any]:
    base = {"failure": 1, "max_failures": 2, "retry": True, "died": True, "preemption": False,
            "reason": "rank 0: Worker unexpectedly exits with a connection error code 2", "resume_epoch": 3}
    return {**base, **changes}


def test_failure_lines() -> None:
    assert failure_line(event()) == ("worker died (rank 0: Worker unexpectedly exits with a connection error code 2); "
                                     "resuming from epoch 3's checkpoint, failure 1 of 2")
    assert failure_line(event(resume_epoch=None, died=False, reason="rank 1: ValueError: boom")) == (
        "worker failed (rank 1: ValueError: boom); restarting from the start (no checkpoint yet), failure 1 of 2")
    assert failure_line(event(failure=3, retry=False)).endswith("; failure 3, over the 2 restart(s) allowed: training stops")
    assert failure_line(event(max_failures=-1)).endswith("failure 1 of unlimited")


def test_short_reasons() -> None:
    assert short_reason(health_check_failure(RayActorError(error_msg=DEAD))) == (
        "Worker unexpectedly exits with a connection error code 2")
    traceback_text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: boom\n'
    assert short_reason(RuntimeError(traceback_text)) == "ValueError: boom"
    assert short_reason(ValueError("bad shape\nmore")) == "ValueError: bad shape"
    two = {1: ValueError("late"), 0: health_check_failure(RayActorError(error_msg=DEAD))}
    assert describe_ranks(two) == "rank 0: Worker unexpectedly exits with a connection error code 2; 1 more rank(s) failed"


def run_context(max_failures: int) -> Any:
    config = SimpleNamespace(failure_config=SimpleNamespace(max_failures=max_failures, max_preemption_failures=-1))
    return SimpleNamespace(get_run_config=lambda: config)


def test_reporter_counts_failures_and_resumes_from_the_latest_checkpoint(tmp_path: Path) -> None:
    failures = tmp_path / "train" / "failures.jsonl"
    reporter = FailureReporter(str(failures), str(tmp_path / "logs" / "run.log"), keep_ray_records=True)
    context = run_context(max_failures=1)
    reporter.after_exception(context, {0: health_check_failure(RayActorError(error_msg=DEAD))})  # before any checkpoint
    reporter.after_report(context, [{"epoch": 0}], SimpleNamespace(path="/ckpt/0"))
    reporter.after_report(context, [{"epoch": 1}], None)  # no checkpoint with this report: not resumable from
    reporter.after_exception(context, {0: health_check_failure(RayActorError(error_msg=DEAD))})
    events = read_failures(failures)
    assert [(e["failure"], e["retry"], e["resume_epoch"], e["checkpoint"]) for e in events] == [
        (1, True, None, None), (2, False, 1, "/ckpt/0")]


def test_reporter_moves_rays_failure_records_off_its_console_into_the_run_log(tmp_path: Path) -> None:
    ray_train = logging.getLogger("ray.train")
    console_stream = io.StringIO()
    console_handler = logging.StreamHandler(console_stream)
    ray_train.addHandler(console_handler)
    level, propagate = ray_train.level, ray_train.propagate
    ray_train.setLevel(logging.DEBUG)
    ray_train.propagate = False
    log = tmp_path / "logs" / "run.log"
    try:
        reporter = FailureReporter(str(tmp_path / "failures.jsonl"), str(log))
        reporter.after_report(run_context(1), [{"epoch": 0}], None)
        try:
            raise RuntimeError("the worker group failed")
        except RuntimeError:
            logging.getLogger(f"{RAY_FAILURE_LOGGERS[0]}.default").info("[FailurePolicy] RETRY", exc_info=True)
        logging.getLogger("ray.train.v2._internal.execution.controller").info("Attempting to start training worker group")
    finally:
        ray_train.removeHandler(console_handler)
        ray_train.setLevel(level)
        ray_train.propagate = propagate
        for name in RAY_FAILURE_LOGGERS:
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
    assert console_stream.getvalue() == "Attempting to start training worker group\n"  # routine records stay
    text = log.read_text()
    assert "[train] INFO ray.train.v2._internal.execution.failure_handling.default: [FailurePolicy] RETRY" in text
    assert "Traceback (most recent call last)" in text and "RuntimeError: the worker group failed" in text


def test_training_watcher_shows_each_failure_once(tmp_path: Path) -> None:
    screen = io.StringIO()
    watcher = TrainProgress(Console(screen, screen, None, False, False), TrainLayout(tmp_path), time.monotonic())
    append_failure(tmp_path / "failures.jsonl", event())
    watcher.poll()
    watcher.poll()
    with (tmp_path / "failures.jsonl").open("a") as handle:
        handle.write(json.dumps(event(failure=2))[:20])  # still being written: not shown yet
    watcher.poll()
    assert screen.getvalue().splitlines() == [f"  {failure_line(event())}"]


def test_worker_deaths_stay_off_the_console_while_training_tells_of_them() -> None:
    rules = ActionableRules()
    assert rules(RAYLET) and rules("Task was killed due to the node running low on memory.")
    rules.worker_deaths_told = True
    assert not rules(RAYLET) and not rules(f"(TrainController pid=1) {DEAD}")
    assert rules("(raylet) Task was killed due to the node running low on memory.")  # memory is still the user's
