"""Stage `evaluate`: the final metrics, on val_test only, under the run's policy."""

from __future__ import annotations

from typing import Any

from calibration.evaluate import evaluate_under_policy
from ray_app.runs import write_json
from ray_app.splits import load_predictions
from ray_app.stages import EVALUATE
from ray_app.stages.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    """val_test metrics under the policy (also written to the run's evaluation file)."""
    cfg, run = ctx.cfg, ctx.run
    policy = run.policy()
    logits, labels = load_predictions(run, "val_test", EVALUATE.name)
    label_names = ctx.splits.summary()["label_names"]
    with run.stage(EVALUATE.name, EVALUATE.fingerprint(cfg)) as details:
        metrics = evaluate_under_policy(logits, labels, policy, label_names, cfg.calibration.ece_bins)
        write_json(run.evaluation, metrics)
        details.update(
            accuracy=metrics["accuracy"], ece=metrics["calibrated"]["ece"],
            coverage=metrics["policy"]["coverage"], accepted_accuracy=metrics["policy"]["accepted_accuracy"],
            reads=["val_test"],
        )
    return metrics
