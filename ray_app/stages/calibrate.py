"""Stage `calibrate`: on val_calib only, temperature, threshold, guardrail (Ray Tune)
and risk control (`calibration.fit`); the configured rule becomes the policy. This
module reads the logits and writes the results; the fitting is calibration's."""

from __future__ import annotations

from typing import Any

from calibration.fit import fit_calibration
from calibration.report import draw_views, write_report
from calibration.temperature import CalibrationError
from ray_app.errors import UserError
from ray_app.ray_runtime import init_ray
from ray_app.runs import CalibrationLayout, staged_directory, write_json
from ray_app.splits import load_predictions
from ray_app.stages import CALIBRATE
from ray_app.stages.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, run = ctx.cfg, ctx.run
    logits, labels = load_predictions(run, "val_calib", CALIBRATE.name)
    with run.stage(CALIBRATE.name, CALIBRATE.fingerprint(cfg)) as details:
        if cfg.calibration.guardrail.enabled:
            init_ray(cfg)  # the guardrail sweep is the only part that needs Ray
        try:
            fitted = fit_calibration(logits, labels, cfg.calibration, run.calibration_tune_dir)
        except CalibrationError as exc:
            # Training is the expensive part and it succeeded: say how to reuse it.
            raise UserError(f"calibration of run '{run.name}': {exc}. The trained model is kept: `ray-app calibrate "
                            f"{run.name} -o calibration.<key>=<value>` (or a launch of the changed config with "
                            "on_exists resume) calibrates it again without training") from None
        results = {"run": run.name, **fitted.results}
        with staged_directory(run.calibration.root) as staging:
            files = CalibrationLayout(staging)
            write_json(files.temperature, results["temperature"])
            for name, path in (("threshold", files.thresholds), ("guardrail", files.guardrail),
                               ("risk_control", files.risk_control)):
                if name in results:
                    write_json(path, results[name])
            files.policy.write_text(fitted.policy.model_dump_json(indent=2) + "\n")
            write_json(files.views, fitted.views)
            write_report(files.report, results, draw_views(fitted.views, staging))
        details.update(temperature=fitted.temperature, ece_before=fitted.ece_before, ece_after=fitted.ece_after,
                       policy=fitted.policy.rule, reads=["val_calib"])
    return run.stage_info(CALIBRATE.name)
