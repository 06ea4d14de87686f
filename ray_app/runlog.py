"""Per-run logs: everything a command printed, kept with the run.

A run's log (`Run.log_path`: `runs/<name>/logs/run.log`) receives the whole output of
every stage — the driver's, and the Ray workers' that Ray forwards to the driver — one
timestamped line each, tagged with the stage, appended across reruns and resumes. Ray's own session logs
vanish with its cluster; this file stays with the run, so yesterday's failure can
still be read today (`ray-app logs RUN`, the control plane).

The capture works at the file-descriptor level (`capture_output`): Ray's C++ core
and its log forwarding write straight to fds 1 and 2, so replacing `sys.stdout`
alone would miss them. Each invocation is framed by a `==== start` and a `==== end`
line, so a reader can tell the runs of one log apart and knows when one ended.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

START_MARK = "==== start"
END_MARK = "==== end"
# Most lines a reader may ask for at once: a tail is bounded, never the whole file.
MAX_TAIL_LINES = 10_000

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class LogSink:
    """Timestamped lines appended to one log file, from any thread.

    Lines written before `ready()` holds (the run directory does not exist yet: data
    that fails its checks must leave nothing behind) wait in memory and are written
    once it does; if it never does, they are dropped with the process."""

    def __init__(self, path: Path, ready: Callable[[], bool] = lambda: True) -> None:
        self.path = path
        self.stage = "-"
        self._ready = ready
        self._pending: list[str] = []
        self._handle: TextIO | None = None
        self._lock = threading.Lock()

    def write(self, text: str, stage: str | None = None) -> None:
        stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
        tag = stage or self.stage
        lines = [f"{stamp} [{tag}] {strip_ansi(part).rstrip()}\n" for part in text.split("\n")]
        with self._lock:
            if self._handle is None:
                if not self._ready():
                    self._pending += lines
                    return
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Reopened after close() too: late lines (a subprocess still holding the
                # captured pipe) still belong in the log.
                self._handle = self.path.open("a", encoding="utf-8")
                lines, self._pending = self._pending + lines, []
            self._handle.writelines(lines)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class SinkHandler(logging.Handler):
    """Log records of this process into a sink (where capturing the descriptors is not
    ours to do, e.g. inside a Tune trial's actor, whose output Ray forwards itself)."""

    def __init__(self, sink: LogSink, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.sink.write(text)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _console_of(stream: TextIO) -> TextIO:
    """A stream to the terminal (or whatever stdout was) that survives fd 1 being
    redirected: a duplicate of its descriptor, or the object itself when it has none
    (a test's in-memory capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


class _Pump(threading.Thread):
    """Reads one redirected descriptor line by line into the sink. It runs until every
    writer has closed the pipe — subprocesses started meanwhile (a local Ray's) may
    hold it past the capture, and their late lines still belong in the log."""

    def __init__(self, read_fd: int, on_line: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name=f"log-pump-{read_fd}")
        self.read_fd = read_fd
        self.on_line = on_line

    def run(self) -> None:
        with open(self.read_fd, "rb", closefd=True) as pipe:
            for raw in iter(pipe.readline, b""):
                self.on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


@contextmanager
def capture_output(
    sink: LogSink,
    mirror: bool = False,
    actionable: Callable[[str], bool] = lambda line: False,
) -> Iterator[tuple[TextIO, TextIO]]:
    """Send everything written to fds 1 and 2 (Python, C++, subprocesses) to `sink`.

    Yields (console_out, console_err): streams to the original stdout / stderr, for
    what a person should see. With `mirror` every captured line is shown there too
    (`--verbose`); otherwise only lines `actionable` picks (warnings a user must act
    on) reach the console's stderr."""
    console_out, console_err = _console_of(sys.stdout), _console_of(sys.stderr)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    old_streams = sys.stdout, sys.stderr
    pumps = []
    for fd, console in ((1, console_out), (2, console_err)):
        read_fd, write_fd = os.pipe()

        def on_line(line: str, console: TextIO = console) -> None:
            sink.write(line)
            if mirror:
                console.write(line + "\n")
            elif actionable(line):
                console_err.write(f"warning: {strip_ansi(line).strip()}\n")

        pump = _Pump(read_fd, on_line)
        pump.start()
        pumps.append(pump)
        os.dup2(write_fd, fd)
        os.close(write_fd)
    # Python-level writers must reach the pipes too, even when sys.stdout was replaced
    # by something that is not fd 1 (a test's capture).
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    try:
        yield console_out, console_err
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = old_streams
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        # The pipes' last writers in this process are gone: a pump finishes once it has
        # read what is left, unless a subprocess still holds the pipe.
        deadline = time.monotonic() + 2.0
        for pump in pumps:
            pump.join(timeout=max(0.0, deadline - time.monotonic()))
        for console in (console_out, console_err):
            console.flush()


# --- reading --------------------------------------------------------------------------


def lines_backwards(path: Path, block_size: int = 64 * 1024) -> Iterator[str]:
    """The lines of a text file, last first, read in blocks from the end: a reader that
    wants the newest rows of a long file never loads it whole."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        rest = b""
        while position > 0:
            step = min(block_size, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + rest
            parts = data.split(b"\n")
            rest = parts[0]  # may continue in the previous block
            for part in reversed(parts[1:]):
                if part:
                    yield part.decode("utf-8", errors="replace").rstrip("\r")
        if rest:
            yield rest.decode("utf-8", errors="replace").rstrip("\r")


def tail_lines(path: Path, count: int, block_size: int = 64 * 1024) -> list[str]:
    """The last `count` (non-empty) lines of a text file, oldest first."""
    if count <= 0:
        return []
    lines = []
    for line in lines_backwards(path, block_size):
        lines.append(line)
        if len(lines) == count:
            break
    return lines[::-1]


def tail_offset(path: Path, count: int, block_size: int = 64 * 1024) -> int:
    """The byte offset where the last `count` lines of a file start (its size for 0)."""
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = position = handle.tell()
        if count <= 0:
            return size
        newlines = 0
        # A final newline ends the last line; it does not start another.
        skip_last = True
        while position > 0:
            step = min(block_size, position)
            position -= step
            handle.seek(position)
            data = handle.read(step)
            for index in range(len(data) - 1, -1, -1):
                if data[index] != 10:  # b"\n"
                    continue
                if skip_last and position + index == size - 1:
                    continue
                newlines += 1
                if newlines == count:
                    return position + index + 1
            skip_last = False
    return 0


def read_from(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines appended after byte `offset`, and the offset after the last one
    (a line still being written is left for the next read)."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    if end == 0:
        return [], offset
    return data[:end].decode("utf-8", errors="replace").splitlines(), offset + end


def is_end_line(line: str) -> bool:
    return END_MARK in line
