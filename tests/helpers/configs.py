"""The repository, its smoke preset, and a smoke config under a runs root of a test's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"


def smoke_config(root: Path, *overrides: str) -> Any:
    from ray_app.config import load_config

    return load_config(SMOKE, [f"storage.root={root}", *overrides])


def smoke_context(root: Path, *overrides: str) -> Any:
    """The smoke config's StageContext (its run under `root`)."""
    from ray_app.stages.context import StageContext

    return StageContext.for_config(smoke_config(root, *overrides))


def trained(cfg: Any, **options: Any) -> Any:
    """`cfg`'s run with its splits written and trained (`options` go to run_training);
    its StageContext."""
    from ray_app.stages.context import StageContext
    from ray_app.stages.splits import ensure_splits
    from ray_app.stages.train import run_training

    ctx = StageContext.for_config(cfg)
    ensure_splits(ctx)
    run_training(ctx, **options)
    return ctx
