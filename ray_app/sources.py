"""Data sources, all read with Ray Data into one canonical row shape.

Every source yields rows with:
  - `image` (encoded PNG/JPEG bytes) or `text` (str): the content,
  - `label` (str): the class name,
  - `ref` (str): where the row came from (file path or row number), for messages.

`inspect_rows` then decodes / checks every row once, adds `content_hash` (of the
decoded pixels or the text, so re-encodings of one image count as duplicates) and
`error` (empty when the row is usable). Bad rows stop the run before anything is
written, with a message naming the file or row.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
from PIL import Image

from ray_app.config import SourceConfig, check_local_path, is_local_path
from ray_app.errors import DataError

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]
MAX_ERRORS_SHOWN = 10


def content_column(source: SourceConfig) -> str:
    return "image" if source.modality == "image" else "text"


def encoded_digits() -> tuple[list[bytes], np.ndarray]:
    """The scikit-learn digits as PNG bytes and their int targets. Pixel values are
    0..16; scaled to 8-bit grey, the digits travel as ordinary PNGs through the same
    decode path as any user's images (and HTTP requests)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded, digits.target


def _digits_dataset() -> ray.data.Dataset:
    import pandas as pd

    encoded, targets = encoded_digits()
    frame = pd.DataFrame(
        {
            "image": encoded,
            "label": [str(int(t)) for t in targets],
            "ref": [f"sklearn_digits row {i}" for i in range(len(encoded))],
        }
    )
    return ray.data.from_pandas(frame)


def _require_columns(ds: ray.data.Dataset, source: SourceConfig, needed: dict[str, str]) -> None:
    names = ds.schema().names
    missing = [f"{role} column '{col}'" for role, col in needed.items() if col not in names]
    if missing:
        raise DataError(
            f"{source.path}: no {', '.join(missing)}; the data has columns {names}. "
            "Set data.source.label_column / image_column / text_column to match."
        )


def _tabular_dataset(source: SourceConfig) -> ray.data.Dataset:
    assert source.path is not None
    check_local_path(source.path, f"a {source.kind} file or directory")
    try:
        if source.kind == "parquet":
            ds = ray.data.read_parquet(source.path, include_paths=True)
        elif source.kind == "csv":
            ds = ray.data.read_csv(source.path, include_paths=True)
        else:
            ds = ray.data.read_json(source.path, lines=True, include_paths=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {source.kind} data at '{source.path}': {exc}") from None
    content_col = source.image_column or source.text_column or "text"
    role = "image" if source.image_column else "text"
    _require_columns(ds, source, {"label": source.label_column, role: content_col})
    canonical = "image" if source.image_column else "text"

    def to_canonical(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch[source.label_column]
        return {
            canonical: batch[content_col],
            "label": np.array(["" if _missing(v) else _label_text(v) for v in labels], dtype=object),
            "ref": np.array([str(p) for p in batch["path"]], dtype=object),
        }

    return ds.map_batches(to_canonical, batch_format="numpy")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _label_text(value: Any) -> str:
    # 3.0 read from a CSV with gaps is the class "3", not "3.0".
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _image_folder_dataset(source: SourceConfig) -> ray.data.Dataset:
    assert source.path is not None
    check_local_path(source.path, "an image_folder root with one subdirectory per class")
    root = Path(source.path)
    if is_local_path(source.path):
        classes = [d for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
        if not classes:
            raise DataError(
                f"image_folder '{root}' has no class subdirectories; expected "
                "root/<class>/<image>.png|jpg"
            )
    try:
        ds = ray.data.read_binary_files(
            source.path, include_paths=True, file_extensions=IMAGE_EXTENSIONS
        )
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read images under '{source.path}': {exc}") from None

    def to_canonical(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        return {
            "image": batch["bytes"],
            "label": np.array([Path(p).parent.name for p in paths], dtype=object),
            "ref": np.array(paths, dtype=object),
        }

    return ds.map_batches(to_canonical, batch_format="numpy")


def read_source(source: SourceConfig) -> ray.data.Dataset:
    """The configured source as a Ray Dataset of canonical rows (content, label, ref)."""
    if source.kind == "sklearn_digits":
        return _digits_dataset()
    if source.kind == "image_folder":
        return _image_folder_dataset(source)
    return _tabular_dataset(source)


def read_reviewed_export(source: SourceConfig, path: str) -> ray.data.Dataset:
    """A review export (`data.reviewed`) as canonical rows, read exactly as a parquet
    source with the run's source columns (`SourceConfig.file_columns`): a file without
    them is a DataError naming it and the columns it has."""
    content, label = source.file_columns
    as_source = SourceConfig(kind="parquet", path=path, label_column=label,
                             **{"image_column" if source.modality == "image" else "text_column": content})
    return _tabular_dataset(as_source)


def _inspect_batch(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    hashes: list[str] = []
    errors: list[str] = []
    for content, label in zip(batch[column], batch["label"], strict=True):
        problem = "" if label else "missing label"
        digest = ""
        try:
            if column == "image":
                with Image.open(io.BytesIO(bytes(content))) as image:
                    image.load()
                    pixels = np.asarray(image)
                    header = f"{image.mode}:{pixels.shape}".encode()
                digest = hashlib.sha256(header + pixels.tobytes()).hexdigest()[:32]
            else:
                if not isinstance(content, str):
                    raise ValueError(f"text is {type(content).__name__}, not a string")
                digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]
        except Exception as exc:  # any decoder failure is a data problem to report
            problem = f"unreadable {column} ({type(exc).__name__}: {exc})"
        hashes.append(digest)
        errors.append(problem)
    return {
        **batch,
        "content_hash": np.array(hashes, dtype=object),
        "error": np.array(errors, dtype=object),
    }


def inspect_rows(ds: ray.data.Dataset, source: SourceConfig) -> ray.data.Dataset:
    """Decode every row once; add `content_hash` and `error`. Materialised, because the
    split plan and the split writer both read it."""
    column = content_column(source)
    return ds.map_batches(
        _inspect_batch, fn_kwargs={"column": column}, batch_format="numpy"
    ).materialize()


def raise_on_bad_rows(index: Any) -> None:
    """Stop before any split is written when rows could not be read."""
    bad = index[index["error"] != ""]
    if len(bad) == 0:
        return
    shown = "\n".join(f"    {r.ref}: {r.error}" for r in bad.head(MAX_ERRORS_SHOWN).itertuples())
    more = f"\n    ... and {len(bad) - MAX_ERRORS_SHOWN} more" if len(bad) > MAX_ERRORS_SHOWN else ""
    raise DataError(
        f"{len(bad)} of {len(index)} rows cannot be used:\n{shown}{more}\n"
        "Fix or remove these files/rows and run again."
    )
