"""Reading the decision record (`serve.decisions` writes it): the union of every
replica's file, committed batches only, for the review queue and the monitor."""

from __future__ import annotations

import heapq
import io
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serve.decisions import DECISIONS, InputKind, connect, store_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedAnswer:
    """One recorded answer. `input` is kept for review (assist; abstain unless
    switched off): the text (str), the image file as sent (bytes), or the pixel rows
    as a float32 .npy (bytes); None otherwise."""

    answered_at: float
    request_id: str
    input_index: int
    model_version: str
    label: str
    label_id: int
    confidence: float
    decision: Literal["accept", "assist", "abstain"]
    top_k: list[tuple[int, str, float]]
    policy: dict[str, Any]
    input_kind: InputKind | None
    input: str | bytes | None
    writer: str
    latency_ms: float | None = None  # the replica's time to answer the whole request

    def pixels(self) -> np.ndarray:
        """The pixel rows of a kept `pixels` input."""
        if self.input_kind != "pixels" or not isinstance(self.input, bytes):
            raise ValueError(f"answer {self.request_id}[{self.input_index}] kept no pixels (input_kind {self.input_kind})")
        return np.load(io.BytesIO(self.input), allow_pickle=False)


class DecisionStore:
    """Reads a store directory: the union of every replica's file, committed batches
    only (SQLite ignores an uncommitted or torn tail). A file with no committed schema
    yet (its writer died at once) has no answers; a file that is not SQLite is skipped
    with a warning, so one damaged file does not hide the others."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def read(
        self,
        model_version: str | None = None,
        decisions: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        order_by: Literal["answered_at", "confidence"] = "answered_at",
        limit: int | None = None,
        with_inputs: bool = True,
        accepted_with_input_only: bool = False,
    ) -> list[RecordedAnswer]:
        """Recorded answers, filtered: one model version, some decisions (e.g.
        ("assist", "abstain") for a review queue), answered in [since, until) (unix
        seconds). Ordered by time (oldest first) or by confidence (least confident
        first, the review queue's order); at most `limit`. `accepted_with_input_only`:
        accepted answers only when they kept their input (the audit sample), as a
        review queue wants them."""
        where, parameters = self._filters(model_version, decisions, since, until)
        if accepted_with_input_only:
            where = (f"{where} AND" if where else "WHERE") + " (a.decision <> 'accept' OR a.input_kind IS NOT NULL)"
        if order_by not in ("answered_at", "confidence"):
            raise ValueError(f"order_by must be 'answered_at' or 'confidence', not {order_by!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        columns = ("a.answered_at, a.request_id, a.input_index, a.model_version, a.label, a.label_id, a.confidence, "
                   "a.decision, a.top_k, p.policy, " + ("a.input_kind, a.input" if with_inputs else "NULL, NULL")
                   + ", a.latency_ms")
        sql = (f"SELECT {columns} FROM answers a JOIN policies p ON p.id = a.policy_id {where} "
               f"ORDER BY a.{order_by}, a.rowid" + (f" LIMIT {int(limit)}" if limit else ""))
        key_index = 0 if order_by == "answered_at" else 6
        per_file = [self._rows(path, sql, parameters) for path in store_files(self.directory)]
        try:
            merged = heapq.merge(*per_file, key=lambda row: row[0][key_index])
            return [self._answer(row, writer) for row, writer in islice(merged, limit)]
        finally:
            for rows in per_file:  # closes the files a limit left unread
                rows.close()

    def counts(self, model_version: str | None = None, since: float | None = None,
               until: float | None = None) -> dict[str, dict[str, int]]:
        """Answers per model version and decision (the monitor's decision mix)."""
        where, parameters = self._filters(model_version, None, since, until)
        sql = f"SELECT a.model_version, a.decision, COUNT(*) FROM answers a {where} GROUP BY 1, 2"
        totals: dict[str, dict[str, int]] = {}
        for path in store_files(self.directory):
            for (version, decision, count), _ in self._rows(path, sql, parameters):
                per_version = totals.setdefault(version, dict.fromkeys(DECISIONS, 0))
                per_version[decision] += count
        return totals

    @staticmethod
    def _filters(model_version: str | None, decisions: Iterable[str] | None, since: float | None,
                 until: float | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        parameters: list[Any] = []
        if model_version is not None:
            clauses.append("a.model_version = ?")
            parameters.append(model_version)
        if decisions is not None:
            wanted = [decisions] if isinstance(decisions, str) else list(decisions)
            unknown = sorted(set(wanted) - set(DECISIONS))
            if unknown or not wanted:
                raise ValueError(f"decisions must be some of {list(DECISIONS)} (got {wanted})")
            clauses.append(f"a.decision IN ({', '.join('?' * len(wanted))})")
            parameters.extend(wanted)
        if since is not None:
            clauses.append("a.answered_at >= ?")
            parameters.append(float(since))
        if until is not None:
            clauses.append("a.answered_at < ?")
            parameters.append(float(until))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", parameters

    @staticmethod
    def _rows(path: Path, sql: str, parameters: list[Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
        try:
            connection = connect(path, create=False)
        except sqlite3.Error:
            return  # removed by retention since the directory was listed
        try:
            connection.execute("PRAGMA query_only = ON")
            if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'answers'").fetchone() is None:
                return  # the writer died before its first commit: no answers
            for row in connection.execute(sql, parameters):
                yield row, path.stem
        except sqlite3.DatabaseError as exc:
            logger.warning("skipping %s: not a readable decisions file (%s)", path, exc)
        finally:
            connection.close()

    @staticmethod
    def _answer(row: tuple[Any, ...], writer: str) -> RecordedAnswer:
        (answered_at, request_id, index, version, label, label_id, confidence, decision, top_k, policy, kind,
         content, latency_ms) = row
        return RecordedAnswer(answered_at=answered_at, request_id=request_id, input_index=index, model_version=version,
                              label=label, label_id=label_id, confidence=confidence, decision=decision,
                              top_k=[(int(i), str(n), float(p)) for i, n, p in json.loads(top_k)],
                              policy=json.loads(policy), input_kind=kind, input=content, writer=writer,
                              latency_ms=latency_ms)
