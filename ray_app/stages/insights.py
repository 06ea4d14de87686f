"""Stage `insights`: what the model learned and where it fails, on val_test — the
outcome of every row, the default (PCA) meaning map, the storyboard, the linear
reference model and the report page (`ray_app.insights` computes each; this module
puts them in the run).

Everything is written into a staging directory that replaces the run's insights at the
end, so a reader never sees half of a new set.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray_app.config import backbone_names
from ray_app.errors import InsightsNotReady
from ray_app.insights.outcomes import READER, Outcomes
from ray_app.insights.projection import compute_projection, resolve_params
from ray_app.insights.reference import fit_reference
from ray_app.insights.report import draw_meaning_map, draw_storyboard, write_insights_report
from ray_app.insights.story import CATEGORIES, build_storyboard
from ray_app.runs import InsightsLayout, staged_directory, write_json
from ray_app.splits import SplitReader
from ray_app.stages import INSIGHTS
from ray_app.stages.context import StageContext
from trainers.preprocess import ImageSpec


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, run = ctx.cfg, ctx.run
    if not cfg.insights.enabled:
        with run.stage(INSIGHTS.name, INSIGHTS.fingerprint(cfg)) as details:
            shutil.rmtree(run.insights.root, ignore_errors=True)
            details.update(disabled=True)
        return run.stage_info(INSIGHTS.name)
    with run.stage(INSIGHTS.name, INSIGHTS.fingerprint(cfg)) as details:
        details.update(build_insights(ctx))
    return run.stage_info(INSIGHTS.name)


class _Timings(dict[str, float]):
    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self[name] = time.monotonic() - started


def build_insights(ctx: StageContext) -> dict[str, Any]:
    """Write the run's insights; returns what the stage records in metadata.json."""
    cfg, run = ctx.cfg, ctx.run
    policy = run.policy()
    if not run.evaluation.is_file():
        raise InsightsNotReady(f"run '{run.name}' has no val_test metrics ({run.evaluation}); run ray-app evaluate "
                               f"{run.name} first")
    metrics = json.loads(run.evaluation.read_text())
    reader = SplitReader(run.splits_dir)
    icfg, timings = cfg.insights, _Timings()
    with staged_directory(run.insights.root) as staging:
        files = InsightsLayout(staging)
        with timings.time("outcomes"):
            outcomes = Outcomes.compute(run, policy, reader.summary()["label_names"])
            outcomes.save(files.outcomes)
        with timings.time("meaning_map"):
            projection, _ = compute_projection(run, outcomes, "pca", resolve_params("pca", None), icfg.seed,
                                               icfg.max_points, layout=files)
        with timings.time("storyboard"):
            storyboard = build_storyboard(outcomes, icfg.examples_per_category, icfg.confused_pairs)
            write_json(files.storyboard, storyboard)
        reference = None
        if icfg.reference.enabled:
            spec = ctx.input_spec
            image_size, channels = (spec.image_size, spec.num_channels) if isinstance(spec, ImageSpec) else (None, 1)
            with timings.time("reference"):
                reference = fit_reference(reader, cfg.data.source.modality, icfg.reference, cfg.seed, image_size,
                                          channels)
                write_json(files.reference, reference)
        _draw_and_report(ctx, files, outcomes, projection, storyboard, reference, metrics, reader, timings)
        details = _details(outcomes, projection, storyboard, reference, metrics, timings, reader)
        write_json(files.summary, {"run": run.name, **details})
    return details


def _draw_and_report(
    ctx: StageContext, files: InsightsLayout, outcomes: Outcomes, projection: dict[str, Any],
    storyboard: dict[str, Any], reference: dict[str, Any] | None, metrics: dict[str, Any], reader: SplitReader,
    timings: _Timings,
) -> None:
    cfg, run = ctx.cfg, ctx.run
    with timings.time("meaning_map_png"):
        index = outcomes.index_of()
        draw_meaning_map(projection, [outcomes.row(index[i]) for i in projection["ids"]], outcomes.label_names,
                         files.meaning_map_png)
    is_image = cfg.data.source.modality == "image"
    with timings.time("storyboard_png"):
        contents = _storyboard_contents(reader, outcomes, storyboard)
        if is_image:
            draw_storyboard(storyboard, contents, files.storyboard_png)
    with timings.time("report"):
        model = {"description": f"{backbone_names(cfg)[1]} {cfg.training.mode}", "accuracy": metrics["accuracy"],
                 "macro_f1": metrics["macro_f1"]}
        write_insights_report(
            files, os.path.relpath(run.calibration.report, run.insights.root), run.name, model, reference,
            run.stage_info("train").get("epoch_seconds"), projection, storyboard,
            {} if is_image else {k: str(v) for k, v in contents.items()}, storyboard_png=is_image,
        )


def _details(
    outcomes: Outcomes, projection: dict[str, Any], storyboard: dict[str, Any], reference: dict[str, Any] | None,
    metrics: dict[str, Any], timings: _Timings, reader: SplitReader,
) -> dict[str, Any]:
    return {
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
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "reads": {stage: sorted(splits) for stage, splits in reader.reads.items()},
    }


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
