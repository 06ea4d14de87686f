"""Stage `export`: the selected model and the policy sealed into the run's bundle
directory, and verified by loading it back as a server would."""

from __future__ import annotations

from typing import Any

from ray_app.runs import library_versions
from ray_app.stages import EXPORT
from ray_app.stages.context import StageContext
from serve.bundle import export_bundle, load_bundle


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, run = ctx.cfg, ctx.run
    model_dir = run.require_model()
    policy = run.policy()
    summary = ctx.splits.summary()
    with run.stage(EXPORT.name, EXPORT.fingerprint(cfg)) as details:
        bundle_dir = export_bundle(
            model_dir,
            policy,
            run.bundle_dir,
            {
                "run": run.name,
                "splits_fingerprint": summary["source_fingerprint"],
                "config_fingerprint": EXPORT.fingerprint(cfg),
                "versions": library_versions(),
            },
        )
        loaded = load_bundle(bundle_dir)  # proves it verifies and loads on its own
        details.update(bundle=str(bundle_dir), model_version=loaded.model_version, files=len(loaded.manifest["files"]))
    return run.stage_info(EXPORT.name)
