"""Deterministic, stratified four-way splits and the split contract.

Planning is a pure function of (content hash, label) pairs and the seed, so it does
not depend on the order Ray Data happens to read files in: rows are grouped by content
hash (exact duplicates stay together, so they can never leak across splits), each
class's groups are ordered by a seeded hash, and each class is cut by largest
remainder with at least one group per split. Same data + seed => byte-identical
`splits.json`.

The split contract says which stage may read which split; `SplitReader` is the only
way the pipeline reads split data, and it refuses (and records) everything else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_app.config import SPLIT_NAMES, AppConfig, SourceConfig, SplitsConfig
from ray_app.errors import DataError, NotReady, SplitContractError

if TYPE_CHECKING:
    import ray.data

    from ray_app.runs import Run

SPLITS_FORMAT_VERSION = 1
# The splits directory's own format: <split>/*.parquet and this summary beside them.
SUMMARY_FILE = "splits.json"

# Which stage may read which split. Training chooses its checkpoint on val_select; the
# post-training "predict" step only runs the chosen, frozen model over val_calib and
# val_test to export their logits; calibration fits on val_calib alone; evaluation
# reports on val_test alone.
# "insights" shows what the final model does on val_test (example contents for the
# meaning map and the storyboard): it reports, like evaluation, and chooses nothing, so
# it reads val_test alone. "reference" is the linear baseline the run is compared with:
# it is trained like the deep model (fit on train, its one setting chosen on
# val_select) and scored once on val_test like evaluation; it never sees val_calib.
# "budget" sizes an epoch before training: it reads exactly what training will read.
STAGE_SPLITS: dict[str, frozenset[str]] = {
    "train": frozenset({"train", "val_select"}),
    "predict": frozenset({"val_calib", "val_test"}),
    "calibrate": frozenset({"val_calib"}),
    "evaluate": frozenset({"val_test"}),
    "insights": frozenset({"val_test"}),
    "reference": frozenset({"train", "val_select", "val_test"}),
    "budget": frozenset({"train", "val_select"}),
}


def label_order(labels: list[str]) -> list[str]:
    """Class names in a stable, human order: numerically when all are integers."""
    unique = sorted(set(labels))
    if all(_is_int(x) for x in unique):
        return sorted(unique, key=int)
    return unique


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def allocate(n: int, ratios: list[float]) -> list[int]:
    """Split n items by ratios (largest remainder), at least one per part. n >= len(ratios)."""
    exact = [n * r for r in ratios]
    counts = [max(1, math.floor(e)) for e in exact]
    while sum(counts) > n:  # the minimum of one per part overshot: take from the largest
        counts[counts.index(max(counts))] -= 1
    order = sorted(range(len(ratios)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _seeded_key(seed: int, content_hash: str) -> str:
    return hashlib.sha256(f"{seed}:{content_hash}".encode()).hexdigest()


def _rows_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes ("missing:<path>" when there is none, so a fingerprint
    can still be formed and the stage that reads it says what is missing). Cached per
    path, size and modification time: a stage's fingerprint is asked for often."""
    target = Path(str(path).removeprefix("file://"))
    try:
        stat = target.stat()
    except OSError:
        return f"missing:{target}"
    return _file_sha256(str(target.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ReviewedRows:
    """The rows of one review export (`data.reviewed`): what planning needs of them."""

    path: str
    fingerprint: str  # sha256 of the file
    content_hashes: list[str]
    labels: list[str]


@dataclass(frozen=True)
class SplitPlan:
    assignment: dict[str, str]  # content hash -> split name (absent: subsampled out)
    label_names: list[str]
    summary: dict[str, Any]  # the content of splits.json
    # Content hashes of reviewed rows that join train (those already in the source do not).
    reviewed_hashes: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> str:
        return json.dumps(self.summary, indent=2, sort_keys=True) + "\n"


def plan_splits(
    content_hashes: list[str],
    labels: list[str],
    config: SplitsConfig,
    seed: int,
    source: SourceConfig | None = None,
    reviewed: list[ReviewedRows] | None = None,
) -> SplitPlan:
    """Assign every distinct content to a split: duplicates grouped, each class's
    groups in seeded order, cut by largest remainder (see the module's docstring).
    `reviewed` rows (review exports) join train only and never change where a source
    row goes: see `_add_reviewed`."""
    if len(content_hashes) != len(labels):
        raise ValueError("content_hashes and labels differ in length")
    label_names = label_order(labels)
    if len(label_names) < 2:
        found = label_names[0] if label_names else "none"
        raise DataError(
            f"the data has a single class ({found!r}); a classifier needs at least two. "
            "Check data.source.label_column."
        )
    labels_per_hash: dict[str, set[str]] = defaultdict(set)
    for h, label in zip(content_hashes, labels, strict=True):
        labels_per_hash[h].add(label)
    groups_by_class = _seeded_groups(labels_per_hash, label_names, config, seed, len(content_hashes))
    ratios = [config.ratios.as_dict()[s] for s in SPLIT_NAMES]
    assignment: dict[str, str] = {}
    for key in sorted(groups_by_class):
        groups = groups_by_class[key]
        start = 0
        for split, count in zip(SPLIT_NAMES, allocate(len(groups), ratios), strict=True):
            for h in groups[start : start + count]:
                assignment[h] = split
            start += count
    added, records = _add_reviewed(reviewed or [], set(labels_per_hash), label_names, assignment)
    summary = _summary(content_hashes, labels, label_names, labels_per_hash, assignment, config, seed, source,
                       added, records)
    return SplitPlan(assignment=assignment, label_names=label_names, summary=summary,
                     reviewed_hashes=frozenset(h for h, _ in added))


def _add_reviewed(
    reviewed: list[ReviewedRows], source_hashes: set[str], label_names: list[str], assignment: dict[str, str]
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Reviewed rows assigned to train (in `assignment`); returns the (hash, label) pairs
    added and one record per export for splits.json. They were picked by a model's
    uncertainty: anywhere but train they would bias model choice, calibration and the
    final metrics. A row whose content is in the source is left out (the source's split
    and label win), so no content crosses splits; a label outside the source's classes
    is a DataError naming the file."""
    known = set(label_names)
    added: list[tuple[str, str]] = []
    records = []
    for export in reviewed:
        unknown = sorted(set(export.labels) - known)
        if unknown:
            raise DataError(
                f"review export '{export.path}' has label(s) {unknown} that are not classes of the source "
                f"(its classes: {label_names}); label with the run's classes, or remove the file from data.reviewed"
            )
        kept = 0
        for content_hash, label in zip(export.content_hashes, export.labels, strict=True):
            if content_hash in source_hashes:
                continue
            assignment[content_hash] = "train"
            added.append((content_hash, label))
            kept += 1
        records.append({"path": export.path, "fingerprint": export.fingerprint, "rows": len(export.labels),
                        "added_to_train": kept, "already_in_source": len(export.labels) - kept})
    return added, records


def _seeded_groups(
    labels_per_hash: dict[str, set[str]], label_names: list[str], config: SplitsConfig, seed: int, num_rows: int
) -> dict[str, list[str]]:
    """Content groups per class (one pool when not stratified) in seeded order, cut
    to the subsample when `max_samples` asks for one; DataError for a class too small
    to reach every split."""
    rank = {name: i for i, name in enumerate(label_names)}
    groups_by_class: dict[str, list[str]] = defaultdict(list)
    for h, labels in labels_per_hash.items():
        # A duplicate group with conflicting labels is stratified by its first label.
        first = min(labels, key=rank.__getitem__)
        groups_by_class[first if config.stratify else "*"].append(h)
    for groups in groups_by_class.values():
        groups.sort(key=lambda h: _seeded_key(seed, h))
    if config.max_samples is not None and config.max_samples < num_rows:
        keep_share = config.max_samples / num_rows
        for key, groups in groups_by_class.items():
            groups_by_class[key] = groups[: max(len(SPLIT_NAMES), round(len(groups) * keep_share))]
    too_small = {k: len(g) for k, g in groups_by_class.items() if len(g) < len(SPLIT_NAMES)}
    if too_small:
        listed = ", ".join(f"{k!r}: {n}" for k, n in sorted(too_small.items()))
        raise DataError(
            f"class(es) too small to stratify into {len(SPLIT_NAMES)} splits "
            f"(distinct samples per class: {listed}); each class needs at least "
            f"{len(SPLIT_NAMES)}. Add samples, drop the class, or set "
            "data.splits.stratify: false."
        )
    return groups_by_class


def _summary(
    content_hashes: list[str], labels: list[str], label_names: list[str], labels_per_hash: dict[str, set[str]],
    assignment: dict[str, str], config: SplitsConfig, seed: int, source: SourceConfig | None,
    reviewed_rows: list[tuple[str, str]], reviewed: list[dict[str, Any]],
) -> dict[str, Any]:
    """The content of splits.json. Reviewed rows count in train's count, classes and
    content hash; `source_fingerprint` stays the source's alone, and `reviewed` (only
    when there are review exports) lists each file with its sha256 and rows used."""
    per_split_lines: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}
    per_split_classes: dict[str, Counter[str]] = {s: Counter() for s in SPLIT_NAMES}
    for h, label in [*zip(content_hashes, labels, strict=True), *reviewed_rows]:
        split = assignment.get(h)
        if split is not None:
            per_split_lines[split].append(f"{h}\t{label}")
            per_split_classes[split][label] += 1
    rows_per_hash = Counter(content_hashes)
    duplicate_groups = [h for h, n in rows_per_hash.items() if n > 1]
    splits_of_hash = {h: {assignment[h]} for h in duplicate_groups if h in assignment}
    summary = {
        "format_version": SPLITS_FORMAT_VERSION,
        "seed": seed,
        "ratios": config.ratios.as_dict(),
        "stratify": config.stratify,
        "max_samples": config.max_samples,
        "source": source.model_dump(mode="json") if source else None,
        "source_fingerprint": _rows_digest(
            [f"{h}\t{label}" for h, label in zip(content_hashes, labels, strict=True)]
        ),
        "num_rows": len(content_hashes),
        "num_rows_used": sum(len(v) for v in per_split_lines.values()),
        "label_names": label_names,
        "duplicates": {
            "duplicate_groups": len(duplicate_groups),
            "duplicate_rows": sum(rows_per_hash[h] for h in duplicate_groups),
            "conflicting_label_groups": sum(1 for ls in labels_per_hash.values() if len(ls) > 1),
            # Duplicates are grouped before splitting, so this is 0 by construction;
            # recorded so a reader of splits.json need not take that on trust.
            "across_splits": sum(1 for s in splits_of_hash.values() if len(s) > 1),
        },
        "splits": {
            s: {
                "count": len(per_split_lines[s]),
                "class_counts": {n: per_split_classes[s][n] for n in label_names},
                "content_hash": _rows_digest(per_split_lines[s]),
            }
            for s in SPLIT_NAMES
        },
    }
    if reviewed:
        summary["reviewed"] = reviewed
    return summary


def read_and_plan(cfg: AppConfig) -> tuple[ray.data.Dataset, SplitPlan]:
    """Read, check and plan everything before any directory is touched: bad data stops
    here and leaves nothing behind. Returns the checked rows (the source's, then the
    review exports' that join train) and their plan."""
    from ray_app.sources import inspect_rows, raise_on_bad_rows, read_reviewed_export, read_source

    source = cfg.data.source
    columns = ["content_hash", "label", "ref", "error"]
    inspected = inspect_rows(read_source(source), source)
    index = inspected.select_columns(columns).to_pandas()
    raise_on_bad_rows(index)
    exports, reviewed = [], []
    for path in cfg.data.reviewed:
        rows = inspect_rows(read_reviewed_export(source, path), source)
        export_index = rows.select_columns(columns).to_pandas()
        raise_on_bad_rows(export_index)
        exports.append(rows)
        reviewed.append(ReviewedRows(path, file_fingerprint(path), export_index["content_hash"].tolist(),
                                     export_index["label"].tolist()))
    plan = plan_splits(index["content_hash"].tolist(), index["label"].tolist(), cfg.data.splits, cfg.seed, source,
                       reviewed)
    if exports:
        keep = plan.reviewed_hashes
        inspected = inspected.union(*(rows.map_batches(_rows_with_hashes, fn_kwargs={"keep": keep},
                                                       batch_format="numpy") for rows in exports))
    return inspected, plan


def _rows_with_hashes(batch: dict[str, np.ndarray], keep: frozenset[str]) -> dict[str, np.ndarray]:
    """Only the rows whose content is in `keep` (a review export's rows that join train)."""
    mask = np.array([h in keep for h in batch["content_hash"]], dtype=bool)
    return {k: v[mask] for k, v in batch.items()}


def _tag_rows(
    batch: dict[str, np.ndarray], assignment: dict[str, str], label_ids: dict[str, int], split: str
) -> dict[str, np.ndarray]:
    keep = np.array([assignment.get(h) == split for h in batch["content_hash"]], dtype=bool)
    out = {k: v[keep] for k, v in batch.items() if k != "error"}
    out["label_id"] = np.array([label_ids[x] for x in out["label"]], dtype=np.int64)
    return out


def write_splits(inspected: ray.data.Dataset, plan: SplitPlan, splits_dir: Path) -> None:
    """Write each split as Parquet under splits_dir/<split>/ plus splits.json.

    Written into a sibling temp directory and renamed at the end, so an interrupted
    write never leaves a splits/ directory that looks complete."""
    tmp_dir = splits_dir.with_name(splits_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    label_ids = {name: i for i, name in enumerate(plan.label_names)}
    import ray

    assignment_ref = ray.put(plan.assignment)  # one copy in the object store, not per task
    for split in SPLIT_NAMES:
        inspected.map_batches(
            _tag_rows_from_ref,
            fn_kwargs={"assignment_ref": assignment_ref, "label_ids": label_ids, "split": split},
            batch_format="numpy",
        ).write_parquet(str((tmp_dir / split).resolve()))
    (tmp_dir / SUMMARY_FILE).write_text(plan.to_json())
    shutil.rmtree(splits_dir, ignore_errors=True)
    tmp_dir.rename(splits_dir)


def _tag_rows_from_ref(batch: dict[str, np.ndarray], assignment_ref: Any, **kwargs: Any) -> dict[str, np.ndarray]:
    import ray

    return _tag_rows(batch, ray.get(assignment_ref), **kwargs)


class SplitReader:
    """The one way stages read split data. Refuses reads the contract forbids and
    records every allowed read in `reads` (stage -> splits), which the run's
    metadata keeps as evidence."""

    def __init__(self, splits_dir: Path) -> None:
        self.splits_dir = splits_dir
        self.reads: dict[str, list[str]] = defaultdict(list)

    @property
    def summary_path(self) -> Path:
        return self.splits_dir / SUMMARY_FILE

    def summary(self) -> dict[str, Any]:
        """The content of splits.json: seed, ratios, counts, label names, hashes."""
        return json.loads(self.summary_path.read_text())

    def read(self, split: str, stage: str) -> ray.data.Dataset:
        check_access(split, stage)
        if split not in self.reads[stage]:
            self.reads[stage].append(split)
        import ray.data

        return ray.data.read_parquet(str((self.splits_dir / split).resolve()))

    def read_table(
        self, split: str, stage: str, columns: list[str] | None = None, filters: list[tuple[str, str, Any]] | None = None
    ) -> Any:
        """The same contract, read in this process as a pyarrow Table: for small reads
        (one example, a text column) where starting Ray Data would cost more than the
        read itself, e.g. in a web server that shows one example."""
        import pyarrow.parquet as pq

        check_access(split, stage)
        if split not in self.reads[stage]:
            self.reads[stage].append(split)
        return pq.read_table(self.splits_dir / split, columns=columns, filters=filters)


def check_access(split: str, stage: str) -> None:
    if split not in SPLIT_NAMES:
        raise SplitContractError(f"unknown split '{split}'; splits are {SPLIT_NAMES}")
    allowed = STAGE_SPLITS.get(stage)
    if allowed is None:
        raise SplitContractError(f"unknown stage '{stage}'; stages are {sorted(STAGE_SPLITS)}")
    if split not in allowed:
        raise SplitContractError(
            f"split contract: stage '{stage}' may not read '{split}' (it may read "
            f"{sorted(allowed)})"
        )


def load_predictions(run: Run, split: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels a stage may read: the split contract applies to predictions
    exactly as to the split files they came from."""
    check_access(split, stage)
    path = run.train.predictions(split)
    if not path.is_file():
        raise NotReady(f"run '{run.name}' has no {split} logits ({path}); train it first: ray-app train <config>")
    with np.load(path, allow_pickle=False) as saved:
        return saved["logits"], saved["labels"]
