"""The review queue: the answers a served model sent to a person (assist, and abstain
when asked), most uncertain first, and when asked the audit sample (accepted answers the
Serve app kept the input of, `serve.decisions.in_audit_sample`); the labels reviewers
give them; and the export of those labels as a dataset a later run adds to its train
split (`data.reviewed`).

Where things live, beside the decision store and outside the run (which stays as
trained): `<runs root>/reviews/<run>/labels.sqlite` and `.../exports/<export id>.parquet`
(+ `.json`), named by `reviews_directory` alone.

* The answers are read from the decision store (`serve.decisions.DecisionStore`); the
  store is never written here.
* An item is one answer, named by `item_id`: a short sha256 of (model version, request
  id, input index). Request ids may come from a client's header, so they never appear
  raw in a URL.
* A review is one row of `labels.sqlite`, inserted in one transaction: a second submit
  for the same item finds the first and is refused (`AlreadyReviewed`), never silently
  replacing it; `undo` deletes it. The row keeps a copy of the answer and its input, so
  an export does not depend on the decision store's retention.
* Order: least confident first, the decision store's own order. A calibrated confidence
  is the probability the answer is right, so the least confident answer is the likeliest
  to be wrong, and a label there teaches the most. It needs no policy: assist and
  abstain answers (and answers of versions with other guardrail bands) share one scale,
  where "closest to the band centre" would differ per policy and put abstain answers
  (below the band) after assist ones in the middle.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from ray_app.errors import (
    AlreadyReviewed,
    DataError,
    InvalidLabel,
    InvalidRequest,
    NothingToExport,
    NotReady,
    ReviewItemNotFound,
)
from ray_app.insights.examples import DEFAULT_THUMBNAIL_PX, MAX_THUMBNAIL_PX, thumbnail_png
from ray_app.runs import Run, write_json
from ray_app.splits import SUMMARY_FILE, file_fingerprint
from serve.bundle import MANIFEST
from serve.decision_store import DecisionStore, RecordedAnswer
from serve.decisions import store_directory

REVIEWS_DIR = "reviews"
LABELS_FILE = "labels.sqlite"
EXPORTS_DIR = "exports"
REVIEWABLE = ("assist", "abstain", "accept")
ReviewStatus = Literal["pending", "labelled", "skipped", "all"]
REVIEW_STATUSES: tuple[str, ...] = get_args(ReviewStatus)
DEFAULT_REVIEWER = "anonymous"
MAX_REVIEWER_CHARS = 100
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    item_id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    model_version TEXT NOT NULL,
    request_id TEXT NOT NULL,
    input_index INTEGER NOT NULL,
    label TEXT,
    skipped INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    prediction TEXT NOT NULL,
    confidence REAL NOT NULL,
    decision TEXT NOT NULL,
    top_k TEXT NOT NULL,
    input_kind TEXT,
    input BLOB,
    CHECK ((skipped = 1 AND label IS NULL) OR (skipped = 0 AND label IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS labels_by_version ON labels (model_version, reviewed_at);
"""
COLUMNS = ("item_id, run, model_version, request_id, input_index, label, skipped, reviewer, reviewed_at, answered_at, "
           "prediction, confidence, decision, top_k, input_kind, input")


# --- where -----------------------------------------------------------------------------------


def reviews_directory(runs_root: Path, run_name: str) -> Path:
    """`<runs root>/reviews/<run>`: the run's labels and exports, beside its decision
    store and outside the run directory (which stays as trained)."""
    return Path(runs_root) / REVIEWS_DIR / store_directory(runs_root, run_name).name  # (checks the name)


def labels_path(runs_root: Path, run_name: str) -> Path:
    return reviews_directory(runs_root, run_name) / LABELS_FILE


def exports_directory(runs_root: Path, run_name: str) -> Path:
    return reviews_directory(runs_root, run_name) / EXPORTS_DIR


def item_id(model_version: str, request_id: str, input_index: int) -> str:
    """The stable, URL-safe id of one recorded answer (16 hex digits of a sha256)."""
    key = json.dumps([model_version, request_id, int(input_index)], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def answer_id(answer: RecordedAnswer) -> str:
    return item_id(answer.model_version, answer.request_id, answer.input_index)


def iso_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat(timespec="seconds")


# --- what a run is labelled with ---------------------------------------------------------------


def label_names(run: Run) -> list[str]:
    """The classes a reviewer chooses from: the run's bundle's label names (what
    answered), else its splits' (the source's classes)."""
    for path, what in ((run.bundle_dir / MANIFEST, "bundle"), (run.splits_dir / SUMMARY_FILE, "splits")):
        if path.is_file():
            try:
                names = json.loads(path.read_text())["label_names"]
            except (OSError, ValueError, KeyError) as exc:
                raise NotReady(f"run '{run.name}': its {what} file {path} has no readable label names ({exc})") from None
            return [str(n) for n in names]
    raise NotReady(f"run '{run.name}' has no bundle or splits yet, so no classes to label with; "
                   f"make them first: ray-app run {run.config_path}")


# --- the records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """One reviewer's verdict on one item, with the copy of the answer it was about."""

    item_id: str
    run: str
    model_version: str
    request_id: str
    input_index: int
    label: str | None  # None when skipped
    skipped: bool
    reviewer: str
    reviewed_at: float
    answered_at: float
    prediction: str
    confidence: float
    decision: str
    top_k: list[tuple[int, str, float]]
    input_kind: str | None
    input: str | bytes | None

    def answer(self) -> RecordedAnswer:
        """The answer as recorded (from this copy: the decision store may have let it go)."""
        return RecordedAnswer(answered_at=self.answered_at, request_id=self.request_id, input_index=self.input_index,
                              model_version=self.model_version, label=self.prediction, label_id=-1,
                              confidence=self.confidence, decision=self.decision,  # type: ignore[arg-type]
                              top_k=self.top_k, policy={}, input_kind=self.input_kind,  # type: ignore[arg-type]
                              input=self.input, writer=REVIEWS_DIR)

    def public(self) -> dict[str, Any]:
        """What the API shows of it."""
        return {"label": self.label, "skipped": self.skipped, "reviewer": self.reviewer,
                "reviewed_at": self.reviewed_at}


@dataclass(frozen=True)
class QueueItem:
    id: str
    answer: RecordedAnswer
    review: Review | None

    @property
    def status(self) -> str:
        if self.review is None:
            return "pending"
        return "skipped" if self.review.skipped else "labelled"

    def public(self) -> dict[str, Any]:
        """The item as the queue lists it."""
        answer = self.answer
        return {
            "id": self.id, "model_version": answer.model_version, "answered_at": answer.answered_at,
            "prediction": answer.label, "confidence": answer.confidence, "decision": answer.decision,
            "top_k": [{"label": name, "probability": probability} for _, name, probability in answer.top_k],
            "input_kind": answer.input_kind, "review": self.review.public() if self.review else None,
        }


def pixels_png(pixels: np.ndarray) -> bytes:
    """Pixel rows (0..255, (H, W) or (H, W, C)) as an 8-bit PNG, as
    `ray_app.sources.encoded_digits` encodes the digits: the same decode path as any
    image then reads them."""
    values = np.rint(np.clip(np.asarray(pixels, dtype=np.float64), 0, 255)).astype(np.uint8)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    mode = {2: "L"}.get(values.ndim) or {3: "RGB", 4: "RGBA"}.get(values.shape[-1])
    if mode is None:
        raise ValueError(f"pixels of shape {values.shape} are not an image")
    buffer = io.BytesIO()
    Image.fromarray(values, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels_of(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


# --- the store ---------------------------------------------------------------------------------------


@contextmanager
def _connection(path: Path, write: bool) -> Iterator[sqlite3.Connection]:
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(f"file:{path}?mode={'rwc' if write else 'ro'}", uri=True, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if write:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(SCHEMA)
        yield connection
    finally:
        connection.close()


def _review(row: tuple[Any, ...]) -> Review:
    (item, run, version, request_id, index, label, skipped, reviewer, reviewed_at, answered_at, prediction, confidence,
     decision, top_k, kind, content) = row
    return Review(item_id=item, run=run, model_version=version, request_id=request_id, input_index=int(index),
                  label=label, skipped=bool(skipped), reviewer=reviewer, reviewed_at=float(reviewed_at),
                  answered_at=float(answered_at), prediction=prediction, confidence=float(confidence),
                  decision=decision, top_k=[(int(i), str(n), float(p)) for i, n, p in json.loads(top_k)],
                  input_kind=kind, input=content)


def check_decisions(decisions: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(decisions))
    if not wanted or set(wanted) - set(REVIEWABLE):
        raise InvalidRequest(f"decisions must be some of {list(REVIEWABLE)} (got {list(decisions)}); accept "
                             "lists the audit sample: the accepted answers that kept their input")
    return wanted


class ReviewQueue:
    """The review queue of one run: its recorded answers (read-only) and its labels."""

    def __init__(self, run: Run, runs_root: Path) -> None:
        self.run = run
        self.runs_root = Path(runs_root)
        self.answers = DecisionStore(store_directory(self.runs_root, run.name))
        self.labels_path = labels_path(self.runs_root, run.name)

    # --- reading ---
    def reviews(self, model_version: str | None = None) -> dict[str, Review]:
        """Every review of the run (of one model version when given), by item id."""
        if not self.labels_path.is_file():
            return {}
        where, parameters = ("WHERE model_version = ?", [model_version]) if model_version is not None else ("", [])
        with _connection(self.labels_path, write=False) as connection:
            rows = connection.execute(f"SELECT {COLUMNS} FROM labels {where} ORDER BY item_id", parameters).fetchall()
        return {row[0]: _review(row) for row in rows}

    def queue(self, decisions: tuple[str, ...] = ("assist",), model_version: str | None = None,
              status: ReviewStatus = "pending", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of the queue, least confident first, and the count of every status
        over the whole queue (these decisions and model version)."""
        decisions = check_decisions(decisions)
        if status not in REVIEW_STATUSES:
            raise InvalidRequest(f"status must be one of {list(REVIEW_STATUSES)} (got {status!r})")
        if limit < 1 or offset < 0:
            raise InvalidRequest(f"limit must be at least 1 and offset at least 0 (got {limit}, {offset})")
        names = label_names(self.run)
        reviews = self.reviews(model_version)
        answers = self.answers.read(model_version=model_version, decisions=decisions, order_by="confidence",
                                    with_inputs=False, accepted_with_input_only=True)
        items = [QueueItem(answer_id(a), a, None) for a in answers]
        items = [QueueItem(i.id, i.answer, reviews.get(i.id)) for i in items]
        items.sort(key=lambda i: (i.answer.confidence, i.answer.answered_at, i.id))
        counts = Counter(i.status for i in items)
        chosen = items if status == "all" else [i for i in items if i.status == status]
        page = [self._with_input_kind(i) for i in chosen[offset:offset + limit]]
        return {"run": self.run.name, "label_names": names,
                "counts": {s: counts.get(s, 0) for s in ("pending", "labelled", "skipped")},
                "total": len(chosen), "items": [i.public() for i in page]}

    def _with_input_kind(self, item: QueueItem) -> QueueItem:
        """The item with its answer's kept input (a listing reads answers without their
        inputs, so one page reads only its own)."""
        return QueueItem(item.id, self._answer_with_input(item.answer), item.review)

    def _answer_with_input(self, answer: RecordedAnswer) -> RecordedAnswer:
        # answered_at is stored as a REAL: [t, next float after t) holds exactly its answers.
        candidates = self.answers.read(model_version=answer.model_version, since=answer.answered_at,
                                       until=math.nextafter(answer.answered_at, math.inf))
        return next((c for c in candidates
                     if c.request_id == answer.request_id and c.input_index == answer.input_index), answer)

    def find(self, item: str) -> QueueItem:
        """The item with its input, or ReviewItemNotFound."""
        review = self.reviews().get(item)
        for answer in self.answers.read(decisions=REVIEWABLE, with_inputs=False, accepted_with_input_only=True):
            if answer_id(answer) == item:
                return QueueItem(item, self._answer_with_input(answer), review)
        if review is not None:  # reviewed, then let go by the decision store's retention
            return QueueItem(item, review.answer(), review)
        raise ReviewItemNotFound(f"run '{self.run.name}' has no review item '{item}'; item ids come from "
                                 f"GET /api/v1/runs/{self.run.name}/review")

    def item_detail(self, item: str, thumbnail_px: int = DEFAULT_THUMBNAIL_PX) -> dict[str, Any]:
        """The item as listed, plus its input to show: the text, or a PNG (an image
        file as sent, or pixel rows) scaled to about `thumbnail_px`."""
        if not 8 <= thumbnail_px <= MAX_THUMBNAIL_PX:
            raise InvalidRequest(f"thumbnail_px must be from 8 to {MAX_THUMBNAIL_PX} (got {thumbnail_px})")
        found = self.find(item)
        answer = found.answer
        shown: dict[str, Any] | None = None
        if answer.input_kind == "text" and isinstance(answer.input, str):
            shown = {"kind": "text", "text": answer.input}
        elif answer.input_kind in ("image", "pixels") and isinstance(answer.input, bytes):
            content = answer.input if answer.input_kind == "image" else pixels_png(_pixels_of(answer.input))
            try:
                png, original, size = thumbnail_png(content, thumbnail_px)
            except (OSError, ValueError) as exc:  # an image the served model could not read either
                shown = {"kind": "unreadable", "reason": f"the recorded image cannot be decoded ({exc})"}
            else:
                shown = {"kind": "image", "media_type": "image/png", "image": base64.b64encode(png).decode("ascii"),
                         "original_size": list(original), "thumbnail_size": list(size)}
        return {"run": self.run.name, "label_names": label_names(self.run), **found.public(), "input": shown}

    # --- writing ---
    def label(self, item: str, label: str | None = None, skip: bool = False,
              reviewer: str | None = None) -> Review:
        """Record a label (one of the run's classes) or a skip for an item. Refuses an
        unknown label (InvalidLabel, listing the classes), an unknown item, an item
        whose input was not kept, and an item already reviewed (AlreadyReviewed)."""
        if (label is None) == (not skip):
            raise InvalidRequest("give either a label or skip: true, not both and not neither")
        names = label_names(self.run)
        if label is not None and label not in names:
            raise InvalidLabel(f"'{label}' is not a class of run '{self.run.name}'; its classes are {names}")
        who = (reviewer or DEFAULT_REVIEWER).strip() or DEFAULT_REVIEWER
        if len(who) > MAX_REVIEWER_CHARS:
            raise InvalidRequest(f"reviewer is {len(who)} characters; at most {MAX_REVIEWER_CHARS}")
        existing = self.reviews().get(item)
        if existing is not None:
            raise self._already(existing)
        answer = self.find(item).answer
        if answer.input is None and not skip:
            raise NotReady(f"item '{item}' kept no input (the Serve app kept no {answer.decision} inputs: "
                           "decisions.keep_abstain_inputs=false), so there is nothing to label; skip it instead")
        review = Review(item_id=item, run=self.run.name, model_version=answer.model_version,
                        request_id=answer.request_id, input_index=answer.input_index, label=label, skipped=skip,
                        reviewer=who, reviewed_at=time.time(), answered_at=answer.answered_at,
                        prediction=answer.label, confidence=answer.confidence, decision=answer.decision,
                        top_k=answer.top_k, input_kind=answer.input_kind, input=answer.input)
        with _connection(self.labels_path, write=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(f"INSERT INTO labels ({COLUMNS}) VALUES ({', '.join('?' * 16)})", (
                    review.item_id, review.run, review.model_version, review.request_id, review.input_index,
                    review.label, int(review.skipped), review.reviewer, review.reviewed_at, review.answered_at,
                    review.prediction, review.confidence, review.decision, json.dumps(review.top_k),
                    review.input_kind, review.input))
            except sqlite3.IntegrityError:  # a concurrent submit won the race
                connection.execute("ROLLBACK")
                raise self._already(self.reviews()[item]) from None
            connection.execute("COMMIT")
        return review

    def _already(self, existing: Review) -> AlreadyReviewed:
        verdict = "skipped" if existing.skipped else f"labelled '{existing.label}'"
        when = iso_time(existing.reviewed_at)
        return AlreadyReviewed(f"item '{existing.item_id}' is already {verdict} by {existing.reviewer} at {when}; "
                               f"undo it first (DELETE /api/v1/runs/{self.run.name}/review/items/{existing.item_id})",
                               existing.reviewer, when)

    def undo(self, item: str) -> None:
        """Remove an item's review (ReviewItemNotFound when it has none)."""
        deleted = 0
        if self.labels_path.is_file():
            with _connection(self.labels_path, write=True) as connection:
                deleted = connection.execute("DELETE FROM labels WHERE item_id = ?", (item,)).rowcount
        if not deleted:
            raise ReviewItemNotFound(f"run '{self.run.name}': item '{item}' has no review to undo")


# --- export ---------------------------------------------------------------------------------------------


def _export_content(review: Review, modality: str) -> str | bytes:
    """The content of a labelled item as the source holds it: the text, or image file
    bytes (pixel rows encoded as a PNG)."""
    if review.input_kind == "text" and isinstance(review.input, str) and modality == "text":
        return review.input
    if review.input_kind == "image" and isinstance(review.input, bytes) and modality == "image":
        return review.input
    if review.input_kind == "pixels" and isinstance(review.input, bytes) and modality == "image":
        return pixels_png(_pixels_of(review.input))
    raise DataError(f"review item '{review.item_id}' holds a {review.input_kind} input, but the run's data source "
                    f"holds {modality}s; undo its review, or export another run's reviews")


def export_reviewed(run: Run, runs_root: Path, model_version: str | None = None) -> dict[str, Any]:
    """Write the run's labelled items (not the skipped) as a Parquet file with the
    columns of the run's data source (`SourceConfig.file_columns`), so a later run reads
    it like its source (`data.reviewed`), plus a JSON sidecar: rows, sha256, created,
    model versions, label counts, item ids. Both through a temporary file and a rename.
    Exporting labels unchanged since an earlier export returns that export, so a run
    trained on it and a rerun asking for the same labels name one file.
    NothingToExport when no item is labelled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = run.config()
    if cfg is None:
        raise NotReady(f"run '{run.name}' has no readable config ({run.config_path}), so the columns of its data "
                       "source are unknown")
    queue = ReviewQueue(run, runs_root)
    labelled = [r for r in queue.reviews(model_version).values() if not r.skipped]
    if not labelled:
        which = f" for model version '{model_version}'" if model_version else ""
        raise NothingToExport(f"run '{run.name}' has no labelled review items{which} to export; label some first "
                              f"(PUT /api/v1/runs/{run.name}/review/items/<id>)")
    labelled.sort(key=lambda r: r.item_id)
    source = cfg.data.source
    content_column, label_column = source.file_columns
    content_type = pa.binary() if source.modality == "image" else pa.string()
    table = pa.table({content_column: pa.array([_export_content(r, source.modality) for r in labelled], content_type),
                      label_column: pa.array([r.label for r in labelled], pa.string())})
    created = time.time()
    directory = exports_directory(runs_root, run.name)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".export.{os.getpid()}.{time.monotonic_ns()}.tmp"
    items = [r.item_id for r in labelled]
    try:
        pq.write_table(table, tmp)
        fingerprint = file_fingerprint(tmp)
        earlier = _earlier_export(directory, fingerprint, items)
        if earlier is not None:
            return earlier
        export_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created))}-{fingerprint[:8]}"
        path = directory / f"{export_id}.parquet"
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    record = {
        "export_id": export_id, "run": run.name, "path": str(path.resolve()), "rows": len(labelled),
        "fingerprint": fingerprint, "created": iso_time(created), "columns": [content_column, label_column],
        "model_versions": sorted({r.model_version for r in labelled}),
        "label_counts": dict(sorted(Counter(str(r.label) for r in labelled).items())),
        "items": items,
    }
    write_json(path.with_suffix(".json"), record)
    return record


def with_review_export(raw: dict[str, Any], export_path: str) -> dict[str, Any]:
    """A config mapping (as config.yaml holds it) that also trains on `export_path`:
    added to `data.reviewed` after the exports the config already names. Those stay:
    their labels answered earlier models, so this run's review queue does not hold them."""
    data = dict(raw.get("data") or {})
    reviewed = [str(path) for path in data.get("reviewed") or []]
    data["reviewed"] = reviewed if export_path in reviewed else [*reviewed, export_path]
    return {**raw, "data": data}


def _earlier_export(directory: Path, fingerprint: str, items: list[str]) -> dict[str, Any] | None:
    """The record of an export of exactly these items with these contents, if one
    is still there (its Parquet file included)."""
    for sidecar in sorted(directory.glob("*.json")):
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(record, dict) and record.get("fingerprint") == fingerprint and record.get("items") == items
                and Path(str(record.get("path", ""))).is_file()):
            return record
    return None
