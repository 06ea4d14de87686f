"""The insights stage's work: from the run's val_test predictions, its policy and its
splits to `insights/` — the outcomes table, the default (PCA) meaning map, the
storyboard, the reference model and the report page.

Everything is written into a sibling temporary directory and moved into place at the
end, so a reader never sees half of a new set of insights.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from calibration.policy import Policy
from ray_app.config import AppConfig
from ray_app.errors import InsightsNotReady
from ray_app.insights.projection import compute_projection, resolve_params
from ray_app.insights.outcomes import OUTCOMES_FILE, READER, Outcomes, insights_dir
from ray_app.insights.reference import fit_reference
from ray_app.insights.report import MAP_PNG, STORYBOARD_PNG, draw_meaning_map, draw_storyboard, write_insights_report
from ray_app.insights.story import CATEGORIES, build_storyboard
from ray_app.runs import Run, write_json_atomic
from ray_app.splits import SplitReader

STORYBOARD_FILE = "storyboard.json"
REFERENCE_FILE = "reference.json"
SUMMARY_FILE = "summary.json"


def _storyboard_contents(reader: SplitReader, outcomes: Outcomes, storyboard: dict[str, Any]) -> dict[str, Any]:
    """The content (image bytes or text) of every example the storyboard shows, read
    once through the split contract."""
    shown = {e["id"] for c in CATEGORIES for e in storyboard["categories"][c]["examples"]}
    shown |= {e["id"] for p in storyboard["confused_pairs"] for e in p["examples"]}
    if not shown:
        return {}
    index = outcomes.index_of()
    hashes = sorted({str(outcomes.content_hashes[index[i]]) for i in shown})
    table = reader.read_table("val_test", READER, filters=[("content_hash", "in", hashes)])
    column = "image" if "image" in table.column_names else "text"
    by_hash = dict(zip(table.column("content_hash").to_pylist(), table.column(column).to_pylist(), strict=True))
    return {i: by_hash[str(outcomes.content_hashes[index[i]])] for i in shown}


def build_insights(cfg: AppConfig, run: Run, model_description: str, image_size: int | None,
                   channels: int) -> dict[str, Any]:
    """Write the run's insights; returns what the stage records in metadata.json."""
    policy_path = run.root / "calibration" / "policy.json"
    metrics_path = run.root / "eval" / "metrics.json"
    for path, command in ((policy_path, "calibrate"), (metrics_path, "evaluate")):
        if not path.is_file():
            raise InsightsNotReady(f"run '{run.name}' has no {path.name} ({path}); run ray-app {command} {run.name} first")
    policy = Policy.model_validate_json(policy_path.read_text())
    metrics = json.loads(metrics_path.read_text())
    reader = SplitReader(run.splits_dir)
    summary = reader.summary()
    icfg = cfg.insights
    out, tmp = insights_dir(run), run.root / "insights.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    seconds: dict[str, float] = {}

    started = time.monotonic()
    outcomes = Outcomes.compute(run, policy, summary["label_names"])
    outcomes.save(tmp / OUTCOMES_FILE)
    seconds["outcomes"] = time.monotonic() - started

    started = time.monotonic()
    projection, _ = compute_projection(run, outcomes, "pca", resolve_params("pca", None), icfg.seed,
                                       icfg.max_points, directory=tmp)
    seconds["meaning_map"] = time.monotonic() - started

    started = time.monotonic()
    storyboard = build_storyboard(outcomes, icfg.examples_per_category, icfg.confused_pairs)
    write_json_atomic(tmp / STORYBOARD_FILE, storyboard)
    seconds["storyboard"] = time.monotonic() - started

    reference = None
    if icfg.reference.enabled:
        started = time.monotonic()
        reference = fit_reference(reader, cfg.data.source.modality, icfg.reference, cfg.seed, image_size, channels)
        write_json_atomic(tmp / REFERENCE_FILE, reference)
        seconds["reference"] = time.monotonic() - started

    started = time.monotonic()
    index = outcomes.index_of()
    draw_meaning_map(projection, [outcomes.row(index[i]) for i in projection["ids"]], outcomes.label_names,
                     tmp / MAP_PNG)
    seconds["meaning_map_png"] = time.monotonic() - started
    started = time.monotonic()
    contents = _storyboard_contents(reader, outcomes, storyboard)
    is_image = cfg.data.source.modality == "image"
    if is_image:
        draw_storyboard(storyboard, contents, tmp / STORYBOARD_PNG)
    seconds["storyboard_png"] = time.monotonic() - started
    started = time.monotonic()
    model = {"description": model_description, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    write_insights_report(
        tmp, run.name, model, reference, run.stage_info("train").get("epoch_seconds"), projection, storyboard,
        {} if is_image else {k: str(v) for k, v in contents.items()}, storyboard_png=is_image,
    )
    seconds["report"] = time.monotonic() - started

    details = {
        "model_sha256": outcomes.model_sha256,
        "n": len(outcomes),
        "map": {"method": "pca", "key": projection["key"], "points": len(projection["ids"]),
                "explained_variance_ratio": projection["explained_variance_ratio"]},
        "storyboard": {c: storyboard["categories"][c]["count"] for c in CATEGORIES}
        | {"confused_pairs": len(storyboard["confused_pairs"])},
        "model_accuracy": metrics["accuracy"],
        "reference": None if reference is None else {
            k: reference[k] for k in ("kind", "C", "val_test_accuracy", "val_test_macro_f1", "train_rows")
        },
        "timings": {k: round(v, 4) for k, v in seconds.items()},
        "reads": {stage: sorted(splits) for stage, splits in reader.reads.items()},
    }
    write_json_atomic(tmp / SUMMARY_FILE, {"run": run.name, **details})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return details
