"""One val_test example by its id: the content (a PNG thumbnail for an image, the text
for text) with the model's outcome on it.

The content is read through the split contract (`SplitReader.read_table`, stage
`insights`, which may read val_test only), in this process and without Ray: a
dashboard asking for one thumbnail must not start a cluster.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from ray_app.errors import ExampleNotFound, InsightsError
from ray_app.insights.outcomes import READER, Outcomes, base_id, row_id
from ray_app.runs import Run
from ray_app.splits import SplitReader

DEFAULT_THUMBNAIL_PX = 128
MAX_THUMBNAIL_PX = 512


def thumbnail_png(content: bytes, size: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """An image scaled so its longer side is about `size` pixels: small images (8×8
    digits) are enlarged by a whole factor with nearest-neighbour, so every pixel stays
    a crisp square; larger ones are reduced smoothly. Returns (PNG bytes, original
    (width, height), thumbnail (width, height))."""
    with Image.open(io.BytesIO(content)) as image:
        image.load()
        original = image.size
        picture = image.convert("RGB" if image.mode not in ("L", "LA", "I", "I;16", "1") else "L")
    longer = max(original)
    if longer <= size:
        factor = max(1, size // longer)
        picture = picture.resize((original[0] * factor, original[1] * factor), Image.Resampling.NEAREST)
    else:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue(), original, picture.size


def example(run: Run, example_id: str | int, thumbnail_px: int = DEFAULT_THUMBNAIL_PX) -> dict[str, Any]:
    """The val_test example `example_id` (an id from the meaning map or the storyboard)
    with its true label, prediction, calibrated confidence and decision; `image` (a
    base64 PNG thumbnail) or `text`, and `source` (where the row came from)."""
    if not isinstance(thumbnail_px, int) or not 8 <= thumbnail_px <= MAX_THUMBNAIL_PX:
        raise InsightsError(f"thumbnail_px must be an integer from 8 to {MAX_THUMBNAIL_PX}, got {thumbnail_px!r}")
    wanted = str(example_id)
    outcomes = Outcomes.load(run)
    position = outcomes.index_of().get(wanted)
    if position is None:
        raise ExampleNotFound(
            f"run '{run.name}' has no val_test example '{wanted}'; ids come from its meaning map or storyboard"
        )
    content_hash = str(outcomes.content_hashes[position])
    reader = SplitReader(run.splits_dir)
    table = reader.read_table("val_test", READER, filters=[("content_hash", "=", content_hash)])
    rows = table.to_pylist()
    match = next((r for r in rows if row_id(r["content_hash"], r["label_id"], r["ref"]) == base_id(wanted)), None)
    if match is None:
        # The outcomes and the split files disagree: the splits were rewritten after the
        # insights were made.
        raise ExampleNotFound(
            f"run '{run.name}': example '{wanted}' is no longer in its val_test split (the splits changed "
            f"since its insights were made); make them again: ray-app insights {run.name}"
        )
    answer: dict[str, Any] = {"run": run.name, "split": "val_test", **outcomes.row(position), "source": match["ref"]}
    if "image" in match:
        png, original, shown = thumbnail_png(match["image"], thumbnail_px)
        answer.update(
            kind="image",
            image=base64.b64encode(png).decode("ascii"),
            media_type="image/png",
            original_size=list(original),
            thumbnail_size=list(shown),
        )
    else:
        answer.update(kind="text", text=str(match["text"]))
    return answer
