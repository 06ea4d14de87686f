"""Stage `splits`: read the source with Ray Data, check every row, and write the four
stratified splits and `splits.json` into the run (`ray_app.splits` plans them)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray_app.config import AppConfig
from ray_app.ray_runtime import init_ray
from ray_app.runs import Run
from ray_app.splits import SplitReader, read_and_plan, write_splits
from ray_app.stages import SPLITS
from ray_app.stages.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    ensure_splits(ctx, force=True)
    return ctx.run.stage_info(SPLITS.name)


def _split_details(summary: dict[str, Any]) -> dict[str, Any]:
    """What metadata.json keeps of splits.json: the counts, the duplicates, and the
    review exports train used (path, sha256, rows), so the run says what it learned from."""
    return {
        "counts": {s: v["count"] for s, v in summary["splits"].items()},
        "duplicates": summary["duplicates"],
        # Always set: a rerun without exports must not keep an earlier run's list.
        "reviewed": summary.get("reviewed", []),
    }


def ensure_splits(ctx: StageContext, force: bool = False) -> SplitReader:
    """The run's splits, written unless complete for this config (or `force`). Bad
    data stops before the run directory is touched."""
    cfg, run = ctx.cfg, ctx.run
    fingerprint = SPLITS.fingerprint(cfg)
    if force or not run.stage_complete(SPLITS.name, fingerprint):
        init_ray(cfg)
        inspected, plan = read_and_plan(cfg)
        run.prepare(cfg)
        with run.stage(SPLITS.name, fingerprint) as details:
            write_splits(inspected, plan, run.splits_dir)
            details.update(_split_details(plan.summary))
    ctx.splits = SplitReader(run.splits_dir)
    return ctx.splits


def write_shared_splits(cfg: AppConfig, splits_dir: Path) -> SplitReader:
    """Splits written outside any run, for runs that share them (a sweep's trials):
    every trial then trains and selects on exactly the same rows."""
    inspected, plan = read_and_plan(cfg)
    shutil.rmtree(splits_dir, ignore_errors=True)
    write_splits(inspected, plan, splits_dir)
    return SplitReader(splits_dir)


def adopt_splits(cfg: AppConfig, run: Run, shared: SplitReader) -> SplitReader:
    """Give a run a copy of shared splits (same seed and data section, so the same
    fingerprint `ensure_splits` would record); later stages cannot tell the difference."""
    fingerprint = SPLITS.fingerprint(cfg)
    if run.stage_complete(SPLITS.name, fingerprint):
        return SplitReader(run.splits_dir)
    run.prepare(cfg)
    with run.stage(SPLITS.name, fingerprint) as details:
        shutil.rmtree(run.splits_dir, ignore_errors=True)
        shutil.copytree(shared.splits_dir, run.splits_dir)
        details.update(_split_details(shared.summary()), copied_from=str(shared.splits_dir))
    return SplitReader(run.splits_dir)
