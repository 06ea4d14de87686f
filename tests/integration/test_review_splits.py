"""The splits stage with review exports (`data.reviewed`) on a local Ray: exactly the
export's new rows join train, every other split is as without it, the run records which
export it used, and an export with the wrong columns or classes stops before anything
is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_app.errors import DataError
from ray_app.review import ReviewQueue, export_reviewed, item_id
from ray_app.runs import Run
from ray_app.splits import SplitReader, file_fingerprint
from ray_app.stages import SPLITS
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from tests.helpers.configs import smoke_config
from tests.helpers.review import VERSION, Answered, digit_pixels, digits_run, record

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An export of three labelled answers: two digits drawn inverted (content the source
    does not hold) and one digit exactly as the source holds it."""
    served = tmp_path_factory.mktemp("served") / "runs"
    digits_run(served)
    record(served, "digits_run", [
        Answered("a", 0, 0.5, "assist", "3", 255 - digit_pixels(3)),
        Answered("b", 0, 0.4, "assist", "4", 255 - digit_pixels(4)),
        Answered("c", 0, 0.3, "assist", "0", digit_pixels(0)),
    ])
    queue = ReviewQueue(Run.under(served, "digits_run"), served)
    for request, label in (("a", "3"), ("b", "4"), ("c", "0")):
        queue.label(item_id(VERSION, request, 0), label)
    return export_reviewed(queue.run, served)


def splits_of(root: Path, *overrides: str) -> tuple[Run, SplitReader]:
    cfg = smoke_config(root, *overrides)
    run = Run.for_config(cfg)
    return run, ensure_splits(StageContext(cfg, run))


def test_reviewed_rows_join_train_only(export: dict, tmp_path: Path) -> None:
    plain_run, plain = splits_of(tmp_path / "plain")
    run, reader = splits_of(tmp_path / "reviewed", f"data.reviewed=[{export['path']}]")
    train = reader.read_table("train", "train").to_pandas()
    plain_train = plain.read_table("train", "train").to_pandas()
    added = train[~train["content_hash"].isin(plain_train["content_hash"])]
    # Exactly the two new contents, with the reviewers' labels; the digit the source has stays the source's.
    assert len(train) == len(plain_train) + 2 and sorted(added["label"]) == ["3", "4"]
    assert set(added["ref"].map(lambda ref: Path(ref).name)) == {Path(export["path"]).name}
    assert sorted(added["label_id"]) == [3, 4]
    for split in ("val_select", "val_calib", "val_test"):
        mine = reader.read_table(split, "reference" if split != "val_calib" else "calibrate").to_pandas()
        theirs = plain.read_table(split, "reference" if split != "val_calib" else "calibrate").to_pandas()
        assert sorted(mine["content_hash"]) == sorted(theirs["content_hash"]), split
    summary, plain_summary = reader.summary(), plain.summary()
    assert summary["reviewed"] == [{"path": export["path"], "fingerprint": export["fingerprint"], "rows": 3,
                                    "added_to_train": 2, "already_in_source": 1}]
    assert summary["splits"]["train"]["count"] == plain_summary["splits"]["train"]["count"] + 2
    assert summary["source_fingerprint"] == plain_summary["source_fingerprint"]
    assert run.stage_info("splits")["reviewed"] == summary["reviewed"]  # the run records what it used
    assert plain_run.stage_info("splits")["reviewed"] == []
    assert export["fingerprint"] == file_fingerprint(export["path"])


def test_a_rewritten_export_makes_the_splits_stale(export: dict, tmp_path: Path) -> None:
    copy = tmp_path / "export.parquet"
    copy.write_bytes(Path(export["path"]).read_bytes())
    cfg = smoke_config(tmp_path / "runs", f"data.reviewed=[{copy}]")
    run = Run.for_config(cfg)
    ensure_splits(StageContext(cfg, run))
    assert run.stage_complete(SPLITS.name, SPLITS.fingerprint(cfg))
    pq.write_table(pq.read_table(copy).slice(0, 1), copy)
    assert not run.stage_complete(SPLITS.name, SPLITS.fingerprint(cfg))  # a rerun splits (and trains) again


def test_a_bad_export_stops_before_anything_is_written(tmp_path: Path) -> None:
    wrong_columns = tmp_path / "wrong_columns.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "label": ["1"]}), wrong_columns)
    with pytest.raises(DataError, match=r"wrong_columns.parquet: no image column 'image'"):
        splits_of(tmp_path / "a", f"data.reviewed=[{wrong_columns}]")
    from ray_app.review import pixels_png

    unknown_class = tmp_path / "unknown_class.parquet"
    pq.write_table(pa.table({"image": [pixels_png(np.full((8, 8), 7.0))], "label": ["eleven"]}), unknown_class)
    with pytest.raises(DataError, match=r"unknown_class.parquet' has label\(s\) \['eleven'\]"):
        splits_of(tmp_path / "b", f"data.reviewed=[{unknown_class}]")
    assert not Run.for_config(smoke_config(tmp_path / "b")).splits_dir.exists()
