"""Sources and splits on a local Ray: real files in, splits on disk, bad data refused
before anything is written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from ray_app.errors import DataError
from ray_app.runs import Run
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from tests.helpers.configs import smoke_config

pytestmark = pytest.mark.usefixtures("ray_local")


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(per_class: int, classes: int = 3) -> list[tuple[str, bytes]]:
    digits = load_digits()
    out = []
    for label in range(classes):
        idx = np.flatnonzero(digits.target == label)[:per_class]
        for i in idx:
            out.append((str(label), png_bytes(np.rint(digits.images[i] * 255 / 16).astype(np.uint8))))
    return out


def image_folder(root: Path, per_class: int = 8, classes: int = 3) -> Path:
    for n, (label, content) in enumerate(digit_images(per_class, classes)):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
        (root / f"class_{label}" / f"{n}.png").write_bytes(content)
    return root


def test_digits_splits_on_disk_are_deterministic(tmp_path: Path) -> None:
    runs = []
    for root in ("a", "b"):
        cfg = smoke_config(tmp_path / root)
        run = Run.for_config(cfg)
        reader = ensure_splits(StageContext(cfg, run))
        runs.append(run)
    a, b = (json.loads((r.splits_dir / "splits.json").read_text()) for r in runs)
    assert (runs[0].splits_dir / "splits.json").read_bytes() == (runs[1].splits_dir / "splits.json").read_bytes()
    wanted = smoke_config(tmp_path).data.splits.max_samples
    assert a["num_rows"] == 1797 and abs(a["num_rows_used"] - wanted) <= 5  # stratified subsample
    # what was written matches what splits.json claims, row for row
    seen: dict[str, set[str]] = {}
    for split, info in a["splits"].items():
        table = pq.read_table(runs[0].splits_dir / split)
        assert table.num_rows == info["count"]
        labels = table.column("label").to_pylist()
        assert {n: labels.count(n) for n in a["label_names"]} == info["class_counts"]
        assert table.column("label_id").to_pylist() == [a["label_names"].index(x) for x in labels]
        seen[split] = set(table.column("content_hash").to_pylist())
    names = list(seen)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not seen[x] & seen[y], f"{x} and {y} share rows"
    meta = runs[0].metadata()
    assert meta["stages"]["splits"]["status"] == "complete"
    # unchanged config: the stage is skipped, files untouched
    before = (runs[0].splits_dir / "splits.json").stat().st_mtime_ns
    ensure_splits(StageContext(smoke_config(tmp_path / "a"), runs[0]))
    assert (runs[0].splits_dir / "splits.json").stat().st_mtime_ns == before
    assert reader.summary() == b


def test_image_folder_source(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs")
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=image_folder", f"data.source.path={root}",
                       "data.splits.max_samples=null")
    summary = ensure_splits(StageContext.for_config(cfg)).summary()
    assert summary["label_names"] == ["class_0", "class_1", "class_2"]
    assert summary["num_rows_used"] == 24
    assert all(min(s["class_counts"].values()) >= 1 for s in summary["splits"].values())


def test_parquet_image_source(tmp_path: Path) -> None:
    rows = digit_images(10)
    path = tmp_path / "digits.parquet"
    pq.write_table(pa.table({"img": [c for _, c in rows], "y": [int(l) for l, _ in rows]}), path)
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=parquet", f"data.source.path={path}",
                       "data.source.image_column=img", "data.source.label_column=y",
                       "data.splits.max_samples=null")
    summary = ensure_splits(StageContext.for_config(cfg)).summary()
    assert summary["label_names"] == ["0", "1", "2"] and summary["num_rows_used"] == 30


def test_unreadable_image_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs")
    broken = root / "class_1" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    runs_root = tmp_path / "runs"
    cfg = smoke_config(runs_root, "data.source.kind=image_folder", f"data.source.path={root}")
    with pytest.raises(DataError, match=r"1 of 25 rows cannot be used:\n.*broken\.png: unreadable image"):
        ensure_splits(StageContext.for_config(cfg))
    assert not runs_root.exists()


def test_missing_label_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"img": [b"x"], "target": [1]}), path)
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=parquet", f"data.source.path={path}",
                       "data.source.image_column=img")
    with pytest.raises(DataError, match=r"no label column 'label'; the data has columns \['img', 'target'"):
        ensure_splits(StageContext.for_config(cfg))
    assert not (tmp_path / "runs").exists()


def test_missing_data_path(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=image_folder", f"data.source.path={tmp_path / 'nope'}")
    with pytest.raises(DataError, match="does not exist"):
        ensure_splits(StageContext.for_config(cfg))


def test_single_class_and_too_small_class_from_files(tmp_path: Path) -> None:
    one = image_folder(tmp_path / "one", per_class=6, classes=1)
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=image_folder", f"data.source.path={one}")
    with pytest.raises(DataError, match="single class \\('class_0'\\)"):
        ensure_splits(StageContext.for_config(cfg))
    small = image_folder(tmp_path / "small", per_class=6, classes=2)
    for extra in list((small / "class_1").iterdir())[3:]:
        extra.unlink()
    cfg = smoke_config(tmp_path / "runs", "data.source.kind=image_folder", f"data.source.path={small}")
    with pytest.raises(DataError, match="'class_1': 3"):
        ensure_splits(StageContext.for_config(cfg))
    assert not (tmp_path / "runs").exists()


def test_csv_text_source_and_tokenized_split(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    from trainers.preprocess import preprocess_dataset

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    lines = ["text,label"] + [f"{'very ' * i}good film,pos" for i in range(8)] + [f"{'very ' * i}bad film,neg" for i in range(8)]
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    cfg = smoke_config(
        tmp_path / "runs", "data.source.kind=csv", f"data.source.path={tmp_path / 'reviews.csv'}",
        "data.splits.max_samples=null", f"model.preprocessing.tokenizer={tmp_path / 'tok'}",
        "model.preprocessing.max_length=12",
        "model.backbone.config={model_type: bert, vocab_size: 9, hidden_size: 16, num_hidden_layers: 1, "
        "num_attention_heads: 2, intermediate_size: 32}",
    )
    reader = ensure_splits(StageContext.for_config(cfg))
    assert reader.summary()["label_names"] == ["neg", "pos"]
    rows = preprocess_dataset(reader.read("train", "train"), StageContext.for_config(cfg).input_spec).take_all()
    assert len(rows) == reader.summary()["splits"]["train"]["count"]
    for row in rows:
        ids = row["input_ids"].tolist()
        assert len(ids) == 12 and ids[0] == 2 and 3 in ids and 1 not in ids  # no unknown words
        assert ids[ids.index(3) - 1] == vocab.index("film")
