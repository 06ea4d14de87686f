"""The decision record: every answer the Serve app gives, kept for a review queue and a
monitor (the control plane reads it with `serve.decision_store.DecisionStore`).

Storage: one SQLite file per writer (one Serve replica process) in one directory, by
default `<runs root>/decisions/<run>/<host>-<pid>-<replica>.sqlite`, in WAL mode. Why:

* No contention between replicas: each appends to its own file, and in WAL mode a
  reader never blocks the writer nor the writer a reader.
* Safe on a crash: a flush is one transaction. A process killed mid-flush leaves WAL
  frames without a commit record, and a torn last write leaves frames whose checksum
  fails; SQLite ignores both when the file is next opened, so a reader sees every
  committed batch and never part of one. `synchronous=NORMAL`: a committed batch
  survives a killed process; only a power loss or OS crash may lose the last batches
  (the WAL is not fsynced per commit), which buys not paying an fsync every second.
* The later readers are queries: the review queue (assist / abstain, most uncertain
  first, and the audit sample of accepted answers: `in_audit_sample`) and the monitor
  (decision mix and confidences per model version) filter on indexed columns, and a
  row can later carry its review state. SQLite is in Python's
  standard library: no new dependency.

Parquet segments written as tmp + rename were the alternative: columnar and compact,
but a segment per flush is ~86,000 small files a day per replica to compact, and
retention or a review label rewrites whole segments.

Off the request path: `DecisionRecorder.record` only puts the request's answers on an
in-memory queue (one item per request, no serialisation). A background thread turns
them into rows (top-k as JSON, inputs kept for review) and writes all that is queued in
one transaction every `flush_interval_s`, and once more on `close` — which the
deployment's `__del__` calls when Serve shuts a replica down gracefully. A crash (the
process killed, the node lost) loses at most the answers queued since the last flush:
one `flush_interval_s`. Retention (`max_age_days`, `max_size_mb`) is applied by the
same thread during a flush, across every replica's file of the directory.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import math
import os
import queue
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from calibration.policy import Policy
from serve.config import DecisionRecording
from serve.predictor import EncodedImage, ModelInput, PredictInput, Prediction

logger = logging.getLogger(__name__)

DECISIONS_DIR = "decisions"
FILE_SUFFIX = ".sqlite"
SCHEMA_VERSION = 1
DECISIONS = ("accept", "assist", "abstain")
InputKind = Literal["text", "image", "pixels"]
# A size check deletes down to this share of max_size_mb, so the next flush does not
# start over the limit again at once.
SIZE_TARGET_FRACTION = 0.9
# Another writer's file is removed once it holds no answers and has not been touched
# (each writer touches its own file at every retention check) for this many checks,
# and never sooner than STALE_FILE_MIN_S: a live writer's file is never removed.
STALE_FILE_CHECKS = 5
STALE_FILE_MIN_S = 600.0
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (id INTEGER PRIMARY KEY, policy TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS answers (
    answered_at REAL NOT NULL,
    request_id TEXT NOT NULL,
    input_index INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    label_id INTEGER NOT NULL,
    confidence REAL NOT NULL,
    decision TEXT NOT NULL,
    top_k TEXT NOT NULL,
    policy_id INTEGER NOT NULL REFERENCES policies(id),
    input_kind TEXT,
    input BLOB,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS answers_by_time ON answers (answered_at);
CREATE INDEX IF NOT EXISTS answers_by_decision ON answers (decision, answered_at);
"""


def store_directory(runs_root: Path, run_name: str) -> Path:
    """Where the answers of the bundle of run `run_name` are recorded by default:
    `<runs root>/decisions/<run>` (outside the run directory, which stays as trained)."""
    name = Path(str(run_name)).name
    if name in ("", ".", ".."):
        raise ValueError(f"{run_name!r} is not a run name a decisions directory can be named after")
    return Path(runs_root) / DECISIONS_DIR / name


def default_directory_for_bundle(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    """The default store of a bundle at `<runs root>/<run>/bundle`: its runs root's
    `decisions/<run>`, the run named by bundle.json (the bundle's parent otherwise)."""
    bundle_dir = Path(bundle_dir)
    return store_directory(bundle_dir.parent.parent, str(manifest.get("run") or bundle_dir.parent.name))


def store_files(directory: Path) -> list[Path]:
    """Every writer's file of a store directory."""
    return sorted(Path(directory).glob(f"*{FILE_SUFFIX}"))


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AnsweredRequest:
    """One request's answers as the request path hands them over: references only;
    the writer thread makes rows of them."""

    answered_at: float
    request_id: str
    model_version: str
    policy: Policy
    predictions: Sequence[Prediction]
    inputs: Sequence[PredictInput]
    prepared: Sequence[ModelInput]
    latency_ms: float | None


def connect(path: Path, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    connection = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, check_same_thread=False,
                                 isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def _file_bytes(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except FileNotFoundError:
            pass
    return total


def in_audit_sample(request_id: str, input_index: int, rate: float) -> bool:
    """Whether an accepted answer keeps its input for the audit sample: the first 8 bytes
    of a sha256 of (request id, input index) read as a number in [0, 1), below `rate`.
    A hash, not a random draw: every replica, a retry and a replay choose alike, and
    the choice cannot lean on the answer (its confidence or class), so the sample's
    accuracy is the accepted answers' accuracy."""
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{request_id}\x00{int(input_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def writer_file(directory: Path, replica: str) -> Path:
    """The file this process writes for `replica`: host and pid make it unique even
    when a replica id comes back in another process."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{socket.gethostname()}-{os.getpid()}-{replica}")
    return Path(directory) / (name + FILE_SUFFIX)


class DecisionRecorder:
    """The writer of one replica: `record` from the request path, a thread that
    flushes, `close` on shutdown. See the module docstring for what a crash loses."""

    def __init__(self, directory: Path, settings: DecisionRecording, replica: str) -> None:
        self.settings = settings
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                f"cannot create the decisions directory '{self.directory}' ({exc.strerror}); set "
                "decisions.directory to a writable directory, or decisions.enabled=false"
            ) from None
        self.path = writer_file(self.directory, replica)
        try:
            self.connection = self._open()
        except sqlite3.Error as exc:
            raise OSError(
                f"cannot write the decisions file '{self.path}' ({exc}); set decisions.directory to a writable "
                "directory, or decisions.enabled=false"
            ) from None
        self.queue: queue.SimpleQueue[_AnsweredRequest] = queue.SimpleQueue()
        self.policy_ids: dict[str, int] = {}
        self.keep = {"assist", "abstain"} if settings.keep_abstain_inputs else {"assist"}
        # Counters for GET /metadata. `recorded`, `failed` and `flushes` change in the
        # writer thread only, `dropped` on the request path only.
        self.recorded = 0
        self.dropped = 0
        self.failed = 0
        self.flushes = 0
        # CPU seconds the writer thread spent in flushes (rows, SQLite, retention): what
        # recording costs the replica besides the queue put on the request path.
        self.writer_cpu_s = 0.0
        self.last_retention_check = -math.inf
        self.stopping = threading.Event()
        self.flush_lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"decisions-{self.path.stem}", daemon=True)
        self.thread.start()

    def _open(self) -> sqlite3.Connection:
        connection = connect(self.path, create=True)
        # auto_vacuum must be set before the first table exists: deleted answers then
        # give their pages back to the file system (incremental_vacuum), not only to SQLite.
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA journal_size_limit = 8388608")
        connection.executescript(SCHEMA)
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?), ('writer', ?), ('created', ?)",
                           (str(SCHEMA_VERSION), self.path.stem, str(time.time())))
        return connection

    # --- the request path ---
    def record(self, request_id: str, model_version: str, policy: Policy, predictions: Sequence[Prediction],
               inputs: Sequence[PredictInput], prepared: Sequence[ModelInput], latency_ms: float | None = None) -> None:
        """Queue one request's answers (cheap: no copy, no serialisation, no I/O).
        `latency_ms`: how long the replica took to answer the request (the monitor's
        latency; HTTP in front of the replica is not in it)."""
        if self.queue.qsize() >= self.settings.max_queued_requests or self.stopping.is_set():
            self.dropped += len(predictions)
            return
        self.queue.put(_AnsweredRequest(time.time(), request_id, model_version, policy, predictions, inputs, prepared,
                                        latency_ms))

    def stats(self) -> dict[str, Any]:
        return {"enabled": True, "file": str(self.path), "recorded": self.recorded, "dropped": self.dropped,
                "failed": self.failed, "flushes": self.flushes, "queued_requests": self.queue.qsize(),
                "writer_cpu_s": round(self.writer_cpu_s, 4)}

    def close(self, timeout_s: float = 15.0) -> None:
        """Write what is queued and stop the writer (a clean shutdown loses nothing).
        Idempotent: Serve's shutdown hook and garbage collection may both call it."""
        if self.closed:
            return
        self.closed = True
        self.stopping.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            logger.warning("decision writer %s did not finish within %.0fs; answers still queued are lost",
                           self.path, timeout_s)

    # --- the writer thread ---
    def _run(self) -> None:
        try:
            while not self.stopping.wait(self.settings.flush_interval_s):
                self.flush()
            self.flush()
        finally:
            self.connection.close()

    def flush(self) -> int:
        """Write every queued answer in one transaction; apply retention when due.
        The writer thread calls it; tests call it directly. Returns the rows written."""
        with self.flush_lock:  # the thread and a direct call never share the connection at once
            started = time.thread_time()
            try:
                return self._flush()
            finally:
                self.writer_cpu_s += time.thread_time() - started

    def _flush(self) -> int:
        requests: list[_AnsweredRequest] = []
        while True:
            try:
                requests.append(self.queue.get_nowait())
            except queue.Empty:
                break
        written = 0
        if requests:
            try:
                written = self._write(requests)
            except (sqlite3.Error, OSError, ValueError):
                self.failed += sum(len(r.predictions) for r in requests)
                logger.exception("could not record %d requests' answers in %s", len(requests), self.path)
        now = time.monotonic()
        if now - self.last_retention_check >= self.settings.retention_check_s:
            self.last_retention_check = now
            try:
                self.apply_retention()
            except (sqlite3.Error, OSError):
                logger.exception("could not apply the decisions retention in %s", self.directory)
        return written

    def _write(self, requests: list[_AnsweredRequest]) -> int:
        rows = []
        with _transaction(self.connection):
            for request in requests:
                policy_id = self._policy_id(request.policy)
                for index, prediction in enumerate(request.predictions):
                    kept = prediction.decision in self.keep or (
                        prediction.decision == "accept"
                        and in_audit_sample(request.request_id, index, self.settings.audit_rate))
                    kind, content = self._review_input(request, index) if kept else (None, None)
                    top_k = json.dumps([[k.label_id, k.label, k.probability] for k in prediction.top_k])
                    rows.append((request.answered_at, request.request_id, index, request.model_version,
                                 prediction.label, prediction.label_id, prediction.confidence, prediction.decision,
                                 top_k, policy_id, kind, content, request.latency_ms))
            self.connection.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.recorded += len(rows)
        self.flushes += 1
        return len(rows)

    def _policy_id(self, policy: Policy) -> int:
        text = policy.model_dump_json()
        if text not in self.policy_ids:
            self.connection.execute("INSERT OR IGNORE INTO policies (policy) VALUES (?)", (text,))
            (self.policy_ids[text],) = self.connection.execute(
                "SELECT id FROM policies WHERE policy = ?", (text,)).fetchone()
        return self.policy_ids[text]

    @staticmethod
    def _review_input(request: _AnsweredRequest, index: int) -> tuple[InputKind, str | bytes]:
        """What a person needs to review the answer: the text, the image file as it was
        sent, or the pixel rows as a float32 .npy (np.load reads it)."""
        prepared = request.prepared[index]
        if isinstance(prepared, str):
            return "text", prepared
        if isinstance(prepared, EncodedImage):
            return "image", prepared.content
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(request.inputs[index].pixels, dtype=np.float32), allow_pickle=False)
        return "pixels", buffer.getvalue()

    # --- retention ---
    def apply_retention(self) -> None:
        """Delete answers older than max_age_days, then the oldest answers while the
        directory is over max_size_mb, in every writer's file; remove files of writers
        gone for good. Deleting in another live writer's file is an ordinary SQLite
        write (it waits for that writer's lock, briefly)."""
        os.utime(self.path)  # this writer is alive: its file is never taken for a stale one
        cutoff = time.time() - self.settings.max_age_days * 86400.0

        def delete_old(connection: sqlite3.Connection) -> None:
            if connection.execute("DELETE FROM answers WHERE answered_at < ?", (cutoff,)).rowcount:
                _compact(connection)

        files = store_files(self.directory)
        for path in files:
            self._in_file(path, delete_old)
        self._shrink_to(files, self.settings.max_size_mb * 1024 * 1024)
        stale_after = max(STALE_FILE_MIN_S, STALE_FILE_CHECKS * self.settings.retention_check_s)
        for path in files:
            try:
                untouched_s = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # another writer removed it first
            if path != self.path and untouched_s > stale_after and self._in_file(path, _count) == 0:
                for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                    part.unlink(missing_ok=True)

    def _shrink_to(self, files: list[Path], max_bytes: float) -> None:
        total = sum(_file_bytes(p) for p in files)
        if total <= max_bytes:
            return
        counts = {p: self._in_file(p, _count) or 0 for p in files}
        rows = sum(counts.values())
        if rows == 0:
            return
        # Rows are deleted in proportion to the bytes over the target, at the average
        # row size; oldest first across every file (a merge of each file's oldest).
        excess = min(rows, math.ceil(rows * (total - SIZE_TARGET_FRACTION * max_bytes) / total))
        connections = {p: (self.connection if p == self.path else connect(p, create=False)) for p in files if counts[p]}
        try:
            cursors = [c.execute("SELECT answered_at FROM answers ORDER BY answered_at LIMIT ?", (excess,))
                       for c in connections.values()]
            oldest = heapq.merge(*((t for (t,) in cursor) for cursor in cursors))
            cutoff = next(islice(oldest, excess - 1, None))
            for cursor in cursors:  # an open read statement would block the checkpoint below
                cursor.close()
            for connection in connections.values():
                connection.execute("DELETE FROM answers WHERE answered_at <= ?", (cutoff,))
                _compact(connection)
        finally:
            for connection in connections.values():
                if connection is not self.connection:
                    connection.close()
        logger.info("decisions store %s was %.1f MB, over its %.1f MB: deleted answers up to %s",
                    self.directory, total / 2**20, max_bytes / 2**20, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                                    time.localtime(cutoff)))

    def _in_file(self, path: Path, action: Any) -> Any:
        """Run `action(connection)` on a writer's file (this writer's own connection for
        its own); a file that vanished or is not a store is skipped (None)."""
        if path == self.path:
            return action(self.connection)
        try:
            connection = connect(path, create=False)
        except sqlite3.Error:
            return None
        try:
            return action(connection)
        except sqlite3.DatabaseError as exc:
            logger.warning("skipping %s in the decisions retention: %s", path, exc)
            return None
        finally:
            connection.close()


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on an error (the connections autocommit
    otherwise, so a flush is exactly one transaction)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


def _compact(connection: sqlite3.Connection) -> None:
    """Give freed pages back to the file system: the database file shrinks at the
    checkpoint, and the WAL is truncated."""
    # Python's execute() steps a statement without result columns only once, which
    # frees one page; executescript steps it to the end.
    connection.executescript("PRAGMA incremental_vacuum;")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def open_recorder(settings: DecisionRecording, default_directory: Path, replica: str) -> DecisionRecorder | None:
    """The recorder a replica uses, or None when recording is off (then nothing is
    created on disk)."""
    if not settings.enabled:
        return None
    return DecisionRecorder(Path(settings.directory) if settings.directory else default_directory, settings, replica)
