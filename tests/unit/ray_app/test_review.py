"""The review queue and its export, on answers recorded by the real decision recorder:
order, counts, labels, skips, undo, every refusal, and an export the pipeline's source
reader takes like its source. Also the split plan's and config's side of `data.reviewed`
(no Ray: the splits stage itself is tested in tests/integration/test_review_splits.py)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_app.cli import main
from ray_app.config import load_config
from ray_app.errors import (
    AlreadyReviewed,
    ConfigError,
    DataError,
    InvalidLabel,
    InvalidRequest,
    NothingToExport,
    ReviewItemNotFound,
)
from ray_app.monitoring import reviewed_correct
from ray_app.review import (
    ReviewQueue,
    export_reviewed,
    exports_directory,
    item_id,
    labels_path,
    pixels_png,
    reviews_directory,
    with_review_export,
)
from ray_app.runs import Run
from ray_app.splits import ReviewedRows, file_fingerprint, plan_splits
from ray_app.stages import SPLITS, TRAIN
from tests.helpers.configs import SMOKE
from tests.helpers.review import OTHER_VERSION, VERSION, Answered, digit_pixels, digits_run, record

CONFIDENCES = {"r1": 0.55, "r2": 0.41, "r3": 0.62, "r4": 0.48}


@pytest.fixture
def queue(tmp_path: Path) -> ReviewQueue:
    runs = tmp_path / "runs"
    digits_run(runs)
    answers = [Answered(rid, 0, c, "assist", "3", digit_pixels(i)) for i, (rid, c) in enumerate(CONFIDENCES.items())]
    answers += [
        Answered("r2", 1, 0.2, "abstain", "5", digit_pixels(10)),  # a second input of request r2
        Answered("r5", 0, 0.99, "accept", "1", digit_pixels(11)),
        Answered("r6", 0, 0.45, "assist", "7", digit_pixels(12), model_version=OTHER_VERSION),
    ]
    record(runs, "digits_run", answers)
    return ReviewQueue(Run.under(runs, "digits_run"), runs)


def ids(page: dict) -> list[str]:
    return [item["id"] for item in page["items"]]


def test_the_queue_is_least_confident_first_with_counts_and_filters(queue: ReviewQueue) -> None:
    page = queue.queue()
    assert [item["confidence"] for item in page["items"]] == [0.41, 0.45, 0.48, 0.55, 0.62]  # assist only
    assert page["label_names"] == [str(d) for d in range(10)]
    assert page["counts"] == {"pending": 5, "labelled": 0, "skipped": 0} and page["total"] == 5
    first = page["items"][0]
    assert first["id"] == item_id(VERSION, "r2", 0) and first["input_kind"] == "pixels" and first["review"] is None
    assert first["top_k"] == [{"label": "3", "probability": 0.41}, {"label": "9", "probability": pytest.approx(0.59)}]
    both = queue.queue(decisions=("assist", "abstain"))
    assert both["items"][0]["decision"] == "abstain" and both["total"] == 6
    assert all(i["decision"] != "accept" for i in both["items"])
    one_version = queue.queue(model_version=OTHER_VERSION)
    assert [i["model_version"] for i in one_version["items"]] == [OTHER_VERSION]
    assert ids(queue.queue(limit=2, offset=1)) == ids(page)[1:3]
    audit = queue.queue(decisions=("accept",))
    assert audit["total"] == 0 and audit["items"] == []  # r5 was accepted outside the audit sample: no input kept
    with pytest.raises(InvalidRequest, match="accept lists the audit sample"):
        queue.queue(decisions=("rejected",))


def test_label_skip_undo_and_every_refusal(queue: ReviewQueue) -> None:
    first, second, third = ids(queue.queue())[:3]
    review = queue.label(first, "8", reviewer="ana")
    assert (review.label, review.skipped, review.reviewer, review.prediction) == ("8", False, "ana", "3")
    queue.label(second, skip=True)
    page = queue.queue(status="all")
    assert page["counts"] == {"pending": 3, "labelled": 1, "skipped": 1}
    by_id = {i["id"]: i for i in page["items"]}
    assert by_id[first]["review"]["label"] == "8" and by_id[second]["review"] == {
        "label": None, "skipped": True, "reviewer": "anonymous", "reviewed_at": by_id[second]["review"]["reviewed_at"]}
    assert ids(queue.queue(status="labelled")) == [first] and first not in ids(queue.queue())

    with pytest.raises(AlreadyReviewed, match="already labelled '8' by ana at .*undo it first"):
        queue.label(first, "3", reviewer="bo")  # a double submit never overwrites
    assert queue.reviews()[first].label == "8"
    with pytest.raises(InvalidLabel, match=r"'eight' is not a class .*\['0', '1', '2'"):
        queue.label(third, "eight")
    with pytest.raises(ReviewItemNotFound):
        queue.label("0000000000000000", "1")
    with pytest.raises(ReviewItemNotFound):
        queue.label(item_id(VERSION, "r5", 0), "1")  # an accepted answer is not in the queue
    with pytest.raises(InvalidRequest, match="either a label or skip"):
        queue.label(third, "1", skip=True)

    queue.undo(first)
    assert first in ids(queue.queue()) and queue.label(first, "3").label == "3"  # undone, labelled afresh
    with pytest.raises(ReviewItemNotFound, match="no review to undo"):
        queue.undo(third)
    assert labels_path(queue.runs_root, "digits_run") == reviews_directory(queue.runs_root, "digits_run") / "labels.sqlite"


def test_the_audit_sample_is_reviewed_exported_and_measured_apart_from_the_band(queue: ReviewQueue,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    """Accepted answers that kept their input (the audit sample) are a queue of their
    own; their labels are exported like any, and the monitor counts them apart: they
    measure the accepted answers' accuracy, the band's reviews do not."""
    runs = queue.runs_root
    record(runs, "digits_run", [Answered("a1", 0, 0.97, "accept", "4", digit_pixels(4)),
                                Answered("a2", 0, 0.93, "accept", "6", digit_pixels(16))], audit_rate=1.0)
    audit = queue.queue(decisions=("accept",))
    assert [i["id"] for i in audit["items"]] == [item_id(VERSION, "a2", 0), item_id(VERSION, "a1", 0)]
    assert all(i["decision"] == "accept" and i["input_kind"] == "pixels" for i in audit["items"])
    assert queue.queue(decisions=("assist", "abstain", "accept"))["total"] == 8  # r5 still left out
    assert queue.item_detail(item_id(VERSION, "a1", 0))["input"]["kind"] == "image"
    assert main(["review", "list", "digits_run", "--runs-root", str(runs), "--decisions", "accept", "--json"]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)["items"]] == [i["id"] for i in audit["items"]]

    queue.label(item_id(VERSION, "a1", 0), "4")
    queue.label(item_id(VERSION, "a2", 0), "5")  # the model said 6
    queue.label(item_id(VERSION, "r2", 0), "3")  # the assist answer said 3
    band, audited = reviewed_correct(queue.run, runs, VERSION, 0.0, time.time() + 1)
    assert sorted(audited.tolist()) == [False, True] and band.tolist() == [True]
    exported = export_reviewed(queue.run, runs)
    assert exported["rows"] == 3 and exported["label_counts"] == {"3": 1, "4": 1, "5": 1}


def test_an_item_shows_its_pixels_as_a_png(queue: ReviewQueue) -> None:
    first = ids(queue.queue())[0]
    detail = queue.item_detail(first, thumbnail_px=64)
    assert detail["input"]["kind"] == "image" and detail["input"]["media_type"] == "image/png"
    import base64

    with Image.open(io.BytesIO(base64.b64decode(detail["input"]["image"]))) as image:
        assert image.size == (64, 64) and detail["input"]["original_size"] == [8, 8]
        shown = np.asarray(image)[::8, ::8]
    assert np.array_equal(shown, digit_pixels(1).astype(np.uint8))  # r2 is the second digit recorded


def test_export_writes_the_sources_columns_and_reads_back_like_the_source(queue: ReviewQueue) -> None:
    with pytest.raises(NothingToExport, match="no labelled review items"):
        export_reviewed(queue.run, queue.runs_root)
    items = ids(queue.queue())
    queue.label(items[0], "3")
    queue.label(items[1], "7")
    queue.label(items[2], skip=True)  # skipped items are not exported
    record = export_reviewed(queue.run, queue.runs_root)
    path = Path(record["path"])
    assert path.parent == exports_directory(queue.runs_root, "digits_run").resolve()
    assert record["rows"] == 2 and record["label_counts"] == {"3": 1, "7": 1}
    assert record["fingerprint"] == file_fingerprint(path) and record["columns"] == ["image", "label"]
    assert sorted(record["model_versions"]) == sorted({VERSION, OTHER_VERSION})
    assert json.loads(path.with_suffix(".json").read_text()) == record
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    table = pq.read_table(path)
    assert table.column_names == ["image", "label"]
    rows = sorted(table.to_pylist(), key=lambda r: r["label"])
    # The source's own decode path reads the pixels the client sent, as `encoded_digits` writes digits.
    from ray_app.sources import _inspect_batch

    checked = _inspect_batch({"image": np.array([r["image"] for r in rows], dtype=object),
                              "label": np.array([r["label"] for r in rows], dtype=object)}, "image")
    assert list(checked["error"]) == ["", ""]
    with Image.open(io.BytesIO(rows[0]["image"])) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), digit_pixels(1).astype(np.uint8))


def test_unchanged_labels_export_to_the_same_file_and_a_new_label_to_a_new_one(queue: ReviewQueue) -> None:
    items = ids(queue.queue())
    queue.label(items[0], "3")
    first = export_reviewed(queue.run, queue.runs_root)
    again = export_reviewed(queue.run, queue.runs_root)
    assert again == first  # the same record: one file a run and a rerun both name
    directory = exports_directory(queue.runs_root, "digits_run")
    assert len(list(directory.glob("*.parquet"))) == 1 and not list(directory.glob("*.tmp"))
    queue.label(items[1], "7")
    grown = export_reviewed(queue.run, queue.runs_root)
    assert grown["path"] != first["path"] and grown["rows"] == 2 and Path(first["path"]).is_file()
    queue.undo(items[1])  # back to the first labels: the first export again
    assert export_reviewed(queue.run, queue.runs_root) == first
    Path(first["path"]).unlink()  # its file gone: written anew, not named
    rewritten = export_reviewed(queue.run, queue.runs_root)
    assert Path(rewritten["path"]).is_file() and rewritten["fingerprint"] == first["fingerprint"]


def test_a_rerun_config_adds_an_export_after_the_ones_it_trained_on() -> None:
    raw = {"seed": 0, "data": {"source": {"kind": "sklearn_digits"}, "reviewed": ["/r/a.parquet"]}}
    added = with_review_export(raw, "/r/b.parquet")
    assert added["data"] == {"source": {"kind": "sklearn_digits"}, "reviewed": ["/r/a.parquet", "/r/b.parquet"]}
    assert raw["data"]["reviewed"] == ["/r/a.parquet"]  # the run's own config is left as it was
    assert with_review_export(added, "/r/b.parquet") == added  # named once
    assert with_review_export({"seed": 0}, "/r/b.parquet") == {"seed": 0, "data": {"reviewed": ["/r/b.parquet"]}}


def test_the_cli_lists_and_exports_and_exits_2_on_user_errors(queue: ReviewQueue, capsys: pytest.CaptureFixture) -> None:
    root = str(queue.runs_root)
    assert main(["review", "export", "digits_run", "--runs-root", root]) == 2
    assert "no labelled review items" in capsys.readouterr().err
    assert main(["review", "list", "digits_run", "--runs-root", root]) == 0
    listed = capsys.readouterr().out
    assert "5 pending, 0 labelled, 0 skipped" in listed and item_id(VERSION, "r2", 0) in listed
    queue.label(item_id(VERSION, "r2", 0), "4")
    assert main(["review", "export", "digits_run", "--runs-root", root, "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["rows"] == 1 and Path(exported["path"]).is_file()
    assert main(["review", "list", "no_such_run", "--runs-root", root]) == 2
    assert "no run named 'no_such_run'" in capsys.readouterr().err


def test_pixels_png_keeps_grey_and_colour_pixels() -> None:
    grey = np.arange(64, dtype=np.float64).reshape(8, 8) * 4
    with Image.open(io.BytesIO(pixels_png(grey))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), grey.astype(np.uint8))
    colour = np.stack([grey, grey / 2, grey / 4], axis=-1)
    with Image.open(io.BytesIO(pixels_png(colour))) as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.rint(colour).astype(np.uint8))


# --- data.reviewed: the plan and the config ----------------------------------------------------------


def test_reviewed_rows_join_train_only_and_never_move_a_source_row() -> None:
    cfg = load_config(SMOKE, ["data.splits.max_samples=null"])
    labels = [d for d in "012" for _ in range(8)]
    hashes = [f"s{i}" for i in range(len(labels))]
    plain = plan_splits(hashes, labels, cfg.data.splits, 0)
    export = ReviewedRows("e.parquet", "f" * 64, ["r1", "r2", "s5", "r1"], ["1", "2", "0", "1"])
    plan = plan_splits(hashes, labels, cfg.data.splits, 0, reviewed=[export])
    assert {h: s for h, s in plan.assignment.items() if h.startswith("s")} == plain.assignment
    assert plan.assignment["r1"] == plan.assignment["r2"] == "train" and plan.reviewed_hashes == {"r1", "r2"}
    train, before = plan.summary["splits"]["train"], plain.summary["splits"]["train"]
    assert train["count"] == before["count"] + 3  # r1 twice, r2; s5 is the source's already
    assert train["class_counts"]["1"] == before["class_counts"]["1"] + 2
    assert train["content_hash"] != before["content_hash"]
    assert {s: plan.summary["splits"][s] for s in ("val_select", "val_calib", "val_test")} == {
        s: plain.summary["splits"][s] for s in ("val_select", "val_calib", "val_test")}
    assert plan.summary["source_fingerprint"] == plain.summary["source_fingerprint"]
    assert plan.summary["reviewed"] == [{"path": "e.parquet", "fingerprint": "f" * 64, "rows": 4,
                                         "added_to_train": 3, "already_in_source": 1}]
    assert "reviewed" not in plain.summary  # splits.json of a run without exports is as before
    with pytest.raises(DataError, match=r"label\(s\) \['7'\] that are not classes of the source"):
        plan_splits(hashes, labels, cfg.data.splits, 0, reviewed=[ReviewedRows("e.parquet", "f", ["r9"], ["7"])])


def test_the_splits_fingerprint_follows_the_exports_content(tmp_path: Path) -> None:
    export = tmp_path / "export.parquet"
    export.write_bytes(b"first")
    cfg = load_config(SMOKE, [f"data.reviewed=[{export}]"])
    plain = load_config(SMOKE)
    first = SPLITS.fingerprint(cfg)
    assert first != SPLITS.fingerprint(plain) and TRAIN.fingerprint(cfg) != TRAIN.fingerprint(plain)
    export.write_bytes(b"second, rewritten in place")
    assert SPLITS.fingerprint(cfg) != first  # the content, not only the path, decides


def test_data_reviewed_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local files, not URIs"):
        load_config(SMOKE, ["data.reviewed=[s3://bucket/x.parquet]"])
    with pytest.raises(ConfigError, match="more than once"):
        load_config(SMOKE, ["data.reviewed=[a.parquet, a.parquet]"])
    from ray_app.config import check_paths_exist

    with pytest.raises(DataError, match="no such review export"):
        check_paths_exist(load_config(SMOKE, [f"data.reviewed=[{tmp_path / 'missing.parquet'}]"]))
