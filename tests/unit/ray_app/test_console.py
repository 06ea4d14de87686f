"""The console: stage lines, training progress from the run's files, framing and the
outcome recorded in the log."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ray_app.console import Console, is_actionable, open_console
from ray_app.errors import UserError
from ray_app.progress import TrainProgress, epoch_line
from ray_app.runlog import END_MARK, START_MARK
from ray_app.runs import TrainLayout
from ray_app.stages import EVALUATE, EXPORT


def row(epoch: int, accuracy: float) -> dict[str, Any]:
    return {"epoch": epoch, "train/loss": 1.5 - epoch / 10, "train/seconds": 0.5, "train/samples_per_s": 500.0,
            "val_select/loss": 1.2, "val_select/accuracy": accuracy, "val_select/macro_f1": accuracy - 0.01, "lr": 0.001}


def write_rows(train_dir: Path, rows: list[dict[str, Any]]) -> None:
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def test_plain_progress_prints_one_line_per_finished_epoch(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(screen, screen, None, interactive=False, verbose=False)
    train_dir = tmp_path / "train"
    watcher = TrainProgress(console, TrainLayout(train_dir), time.monotonic())
    watcher.poll()  # nothing yet: no line
    (train_dir).mkdir()
    (train_dir / "progress.json").write_text(json.dumps({"epoch": 0, "epochs": 3, "step": 4, "steps": 16, "loss": 1.9}))
    watcher.poll()
    assert screen.getvalue() == ""  # without a terminal, steps are not shown
    write_rows(train_dir, [row(0, 0.5)])
    watcher.poll()
    write_rows(train_dir, [row(0, 0.5), row(1, 0.6)])  # metrics.jsonl is rewritten whole each epoch
    watcher.poll()
    watcher.poll()
    lines = screen.getvalue().splitlines()
    assert lines == [epoch_line(row(0, 0.5), 3), epoch_line(row(1, 0.6), 3)]
    assert lines[1] == "  epoch 2/3  loss 1.4000  val_select loss 1.2000 accuracy 0.6000 macro_f1 0.5900  (0.5s, 500 samples/s)"


def test_files_of_an_earlier_training_are_ignored(tmp_path: Path) -> None:
    import os

    write_rows(tmp_path, [row(0, 0.5), row(1, 0.6)])
    old = time.time() - 60
    os.utime(tmp_path / "metrics.jsonl", (old, old))
    screen = io.StringIO()
    watcher = TrainProgress(Console(screen, screen, None, False, False), TrainLayout(tmp_path), time.monotonic())
    watcher.poll()
    assert screen.getvalue() == ""


def test_terminal_progress_draws_a_bar_per_epoch(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(screen, screen, None, interactive=True, verbose=False)
    watcher = TrainProgress(console, TrainLayout(tmp_path), time.monotonic())
    (tmp_path / "progress.json").write_text(json.dumps({"epoch": 0, "epochs": 2, "step": 8, "steps": 16, "loss": 1.25}))
    watcher.poll()
    assert "epoch 1/2" in screen.getvalue() and "8/16" in screen.getvalue() and "loss 1.2500" in screen.getvalue()
    write_rows(tmp_path, [row(0, 0.75)])
    watcher.poll()
    final = screen.getvalue().split("\r")[-1]
    assert "16/16" in final and "val_select accuracy 0.7500" in final and final.endswith("\n")


def test_stage_lines_and_a_failed_stage() -> None:
    screen = io.StringIO()
    console = Console(screen, screen, None, interactive=False, verbose=False)
    run = SimpleNamespace(stage_info=lambda stage: {"seconds": 1.25, "model_version": "r@1"},
                          train=TrainLayout(Path("/nonexistent")))
    with console.stage(5, 5, EXPORT, run):
        pass
    with pytest.raises(RuntimeError), console.stage(4, 5, EVALUATE, run):
        raise RuntimeError("boom")
    lines = screen.getvalue().splitlines()
    assert lines[0] == "[5/5] export    done in 1.2s · bundle verified, r@1"
    assert lines[1].startswith("[4/5] evaluate  failed after ")


@pytest.mark.parametrize("line", [
    "(autoscaler +1m) Warning: The following resource request cannot be scheduled right now: {'CPU': 8.0}",
    "(raylet) [2026-11-22 10:00:00] Task was killed due to the node running low on memory.",
    "A worker died or was killed while executing a task by an unexpected system error.",
    "OSError: [Errno 28] No space left on device",
])
def test_actionable_lines(line: str) -> None:
    assert is_actionable(line)


@pytest.mark.parametrize("line", [
    "(RayTrainWorker pid=1) Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x)",
    "INFO streaming_executor.py:216 -- Execution plan of Dataset train_1: InputDataBuffer[Input] -> ...",
    "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/x`",
])
def test_routine_lines_are_not_actionable(line: str) -> None:
    assert not is_actionable(line)


def test_open_console_frames_the_command_and_records_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    log = tmp_path / "logs" / "run.log"
    with open_console(log, argv=["run", "x.yaml"]) as console:
        print("ray internals")
        console.print("[1/5] splits    done")
        logging.getLogger("trainers.train_loop").warning("the learning rate looks high")
    captured = capfd.readouterr()
    assert captured.out.splitlines() == ["[1/5] splits    done"]
    assert "warning: the learning rate looks high" in captured.err and "ray internals" not in captured.err
    with pytest.raises(UserError), open_console(log, argv=["calibrate", "r"]):
        raise UserError("val_calib has 10 samples; temperature scaling needs at least 50")
    with pytest.raises(ZeroDivisionError), open_console(log, argv=["export", "r"]):
        1 / 0  # noqa: B018
    text = log.read_text()
    assert text.count(START_MARK) == 3 and text.count(END_MARK) == 3  # appended, one frame per command
    assert f"{START_MARK}: ray-app run x.yaml" in text and "ray internals" in text and "the learning rate looks high" in text
    assert "[error] error: val_calib has 10 samples" in text and f"{END_MARK}: failed (exit 2)" in text
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division by zero" in text
    assert f"{END_MARK}: failed (exit 1)" in text
