"""Per-run logs: capture at the descriptor level, pending lines, bounded reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ray_app.cli import main
from ray_app.runlog import END_MARK, LogSink, capture_output, read_from, strip_ansi, tail_lines
from ray_app.runs import Run

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def test_capture_takes_python_c_level_and_subprocess_output(tmp_path: Path) -> None:
    sink = LogSink(tmp_path / "logs" / "run.log")
    sink.stage = "train"
    with capture_output(sink) as (out, _err):
        print("from python")
        sys.stderr.write("\x1b[36m(RayTrainWorker pid=1)\x1b[0m from stderr\n")
        os.write(1, b"straight to fd 1\n")
        subprocess.run(["sh", "-c", "echo from a child process >&2"], check=True)
        out.write("for the person\n")
    text = (tmp_path / "logs" / "run.log").read_text()
    for line in ("from python", "(RayTrainWorker pid=1) from stderr", "straight to fd 1", "from a child process"):
        assert re.search(rf"^{STAMP} \[train\] {re.escape(line)}$", text, re.MULTILINE), text
    assert "for the person" not in text  # the console stream is not captured
    assert "\x1b[" not in text  # colour codes stripped


def test_capture_leaves_the_descriptors_as_they_were(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with capture_output(LogSink(tmp_path / "run.log")) as (out, err):
        print("hidden")
        out.write("shown on stdout\n")
        err.write("shown on stderr\n")
    print("after")
    os.write(2, b"fd 2 after\n")
    captured = capfd.readouterr()
    assert "hidden" not in captured.out
    assert "shown on stdout" in captured.out and "after" in captured.out
    assert "shown on stderr" in captured.err and "fd 2 after" in captured.err


def test_mirror_and_actionable_lines_reach_the_console(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with capture_output(LogSink(tmp_path / "a.log"), actionable=lambda line: "cannot be scheduled" in line):
        print("routine line")
        print("Warning: The following resource request cannot be scheduled right now: {'CPU': 8}")
    captured = capfd.readouterr()
    assert "routine line" not in captured.out + captured.err
    assert "warning: Warning: The following resource request cannot be scheduled" in captured.err
    with capture_output(LogSink(tmp_path / "b.log"), mirror=True):
        print("routine line")
    assert "routine line" in capfd.readouterr().out
    assert "routine line" in (tmp_path / "b.log").read_text()


def test_lines_wait_until_the_run_exists(tmp_path: Path) -> None:
    run_root = tmp_path / "runs" / "r"
    sink = LogSink(Run(run_root).log_path, ready=lambda: (run_root / "metadata.json").is_file())
    sink.write("before the run directory exists")
    assert not run_root.exists()  # nothing written while the run may still be refused
    run_root.mkdir(parents=True)
    (run_root / "metadata.json").write_text("{}")
    sink.write("after")
    lines = Run(run_root).log_path.read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["before the run directory exists", "after"]
    sink.close()
    sink.write("late line")  # reopened: a subprocess's late output is not lost
    assert Run(run_root).log_path.read_text().splitlines()[-1].endswith("late line")


def test_tail_reads_only_the_end_of_a_long_file(tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    path.write_text("".join(f"line {i}\n" for i in range(200_000)))
    assert tail_lines(path, 3) == ["line 199997", "line 199998", "line 199999"]
    assert tail_lines(path, 1, block_size=7) == ["line 199999"]
    assert len(tail_lines(path, 10_000)) == 10_000
    assert tail_lines(tmp_path / "missing.log", 5) == []
    short = tmp_path / "short.log"
    short.write_text("a\nb\n")
    assert tail_lines(short, 50) == ["a", "b"]


def test_read_from_leaves_a_partial_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text("one\ntwo\nthr")
    lines, offset = read_from(path, 0)
    assert lines == ["one", "two"] and offset == len("one\ntwo\n")
    with path.open("a") as handle:
        handle.write("ee\n")
    assert read_from(path, offset) == (["three"], path.stat().st_size)


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[36m(pid=1)\x1b[0m ok \x1b[1m\x1b[32mhttp://x\x1b[39m\x1b[22m") == "(pid=1) ok http://x"


def test_logs_command_tail_and_follow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_root = tmp_path / "runs" / "r1"
    run_root.mkdir(parents=True)
    (run_root / "metadata.json").write_text('{"name": "r1", "stages": {}}')
    log = Run(run_root).log_path
    log.parent.mkdir()
    log.write_text("".join(f"t [train] line {i}\n" for i in range(30)))
    assert main(["logs", "r1", "--root", str(tmp_path / "runs"), "--tail", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"t [train] line {i}" for i in range(25, 30)]

    def finish() -> None:
        time.sleep(0.6)
        with log.open("a") as handle:
            handle.write("t [export] last words\n")
            handle.write(f"t [-] {END_MARK}: exit 0 after 1.0s ====\n")

    writer = threading.Thread(target=finish)
    writer.start()
    started = time.monotonic()
    assert main(["logs", str(run_root), "--tail", "1", "--follow"]) == 0  # returns at the end line
    writer.join()
    assert time.monotonic() - started < 10
    assert capsys.readouterr().out.splitlines()[-2:] == ["t [export] last words", f"t [-] {END_MARK}: exit 0 after 1.0s ===="]
    assert main(["logs", "r1", "--root", str(tmp_path / "runs"), "--tail", "0"]) == 2
    assert "--tail 0: give a number of lines from 1 to 10000" in capsys.readouterr().err
    (run_root / "logs" / "run.log").unlink()
    assert main(["logs", "r1", "--root", str(tmp_path / "runs")]) == 2
    assert "has no log yet" in capsys.readouterr().err
