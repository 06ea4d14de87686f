"""Calibration and evaluation on a local Ray: the Ray Tune guardrail sweep against an
exhaustive grid, the stages on the shared smoke run, and the split contract."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.guardrail import tune_guardrail
from calibration.policy import Policy
from ray_app.console import Console
from ray_app.errors import SplitContractError, UserError
from ray_app.runs import Run
from ray_app.splits import load_predictions
from ray_app.stages import CALIBRATE, EVALUATE, EXPORT, INSIGHTS, STAGES, run_pipeline
from ray_app.stages.context import StageContext
from tests.helpers.references import exhaustive_guardrail

pytestmark = pytest.mark.usefixtures("ray_local")


def test_tune_sweep_matches_exhaustive_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    confidence = rng.beta(4, 1.5, 3000)
    correct = rng.random(3000) < confidence**1.3
    centers, widths = [0.5, 0.6, 0.7, 0.8, 0.9], [0.0, 0.1, 0.2]
    best, rows = tune_guardrail(confidence, correct, centers, widths, 0.15, 0.4, tmp_path, 4)
    reference, reference_rows = exhaustive_guardrail(confidence, correct, centers, widths, 0.15, 0.4)
    assert len(rows) == 15  # every grid point ran as a trial
    assert best == reference
    assert rows == sorted(reference_rows, key=lambda r: (r["center"], r["width"]))
    assert best["feasible"] and best["assist_rate"] <= 0.15


def test_calibration_writes_every_artifact(calibrated) -> None:
    _, run, _ = calibrated
    out = run.root / "calibration"
    expected = {"temperature.json", "thresholds.json", "guardrail.json", "risk_control.json",
                "policy.json", "report.md", "views.json", "reliability.png", "risk_coverage.png",
                "confidence_by_decision.png", "guardrail_heatmap.png"}
    assert expected <= {p.name for p in out.iterdir()}
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    temperature = json.loads((out / "temperature.json").read_text())
    assert temperature["temperature"] > 0
    # temperature scaling never raises the NLL it minimises on val_calib
    assert temperature["after"]["nll"] <= temperature["before"]["nll"] + 1e-9
    policy = Policy.model_validate_json((out / "policy.json").read_text())
    assert policy.rule == "guardrail" and policy.temperature == pytest.approx(temperature["temperature"])
    guardrail = json.loads((out / "guardrail.json").read_text())
    assert (policy.center, policy.width) == (guardrail["center"], guardrail["width"])
    assert guardrail["trials"] == len(guardrail["results"]) == 8 * 5
    report = (out / "report.md").read_text()
    assert "T = " in report and "![reliability](reliability.png)" in report
    info = run.stage_info("calibrate")
    assert info["status"] == "complete" and info["reads"] == ["val_calib"]


def test_evaluate_reports_val_test_under_the_policy(calibrated) -> None:
    _, run, metrics = calibrated
    saved = json.loads((run.root / "eval" / "metrics.json").read_text())
    assert saved["n"] == json.loads((run.splits_dir / "splits.json").read_text())["splits"]["val_test"]["count"]
    logits, labels = load_predictions(run, "val_test", "evaluate")
    assert saved["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    policy = saved["policy"]
    assert policy["rule"] == "guardrail"
    assert policy["coverage"] + policy["assist_rate"] + policy["abstain_rate"] == pytest.approx(1.0)
    assert np.array(saved["confusion_matrix"]["matrix"]).sum() == saved["n"]
    assert run.stage_info("evaluate")["reads"] == ["val_test"]


def test_calibration_cannot_read_val_test(calibrated, tmp_path: Path) -> None:
    cfg, run, _ = calibrated
    with pytest.raises(SplitContractError, match="stage 'calibrate' may not read 'val_test'"):
        load_predictions(run, "val_test", "calibrate")
    with pytest.raises(SplitContractError, match="stage 'evaluate' may not read 'val_calib'"):
        load_predictions(run, "val_calib", "evaluate")
    # and it does not need to: with val_test's logits gone, calibration gives the same policy
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.root, copy.root)
    copy.train.predictions("val_test").unlink()
    CALIBRATE.run(StageContext(cfg, copy))
    assert (copy.root / "calibration" / "policy.json").read_text() == (run.root / "calibration" / "policy.json").read_text()


def test_calibrate_without_logits_and_evaluate_without_policy(tmp_path: Path, smoke_run) -> None:
    cfg, run = smoke_run
    bare = Run(tmp_path / "bare")
    shutil.copytree(run.splits_dir, bare.splits_dir)
    with pytest.raises(UserError, match="has no val_calib logits.*train it first"):
        CALIBRATE.run(StageContext(cfg, bare))
    with pytest.raises(UserError, match="has no policy.*calibrate it first"):
        EVALUATE.run(StageContext(cfg, bare))


def test_policy_rule_that_cannot_be_met_is_an_error(smoke_run, tmp_path: Path) -> None:
    cfg, run = smoke_run
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.root, copy.root)
    strict = cfg.model_copy(deep=True)
    strict.calibration.policy = "risk_control"
    strict.calibration.risk_control.alpha = 0.001
    with pytest.raises(UserError, match="policy risk_control: no threshold qualifies"):
        CALIBRATE.run(StageContext(strict, copy))
    assert copy.stage_info("calibrate")["status"] == "failed"
    assert not (copy.root / "calibration.tmp" / "policy.json").exists()


def test_bundle_round_trip_matches_the_run_under_the_policy(calibrated) -> None:
    import pyarrow.parquet as pq
    import torch

    from calibration.policy import Policy as PolicyModel
    from serve.bundle import load_bundle
    from trainers.preprocess import model_inputs, preprocess_image_batch

    cfg, run, metrics = calibrated
    info = EXPORT.run(StageContext(cfg, run))
    bundle = load_bundle(Path(info["bundle"]))
    assert bundle.policy == PolicyModel.model_validate_json((run.root / "calibration" / "policy.json").read_text())
    assert bundle.manifest["splits_fingerprint"] == json.loads((run.splits_dir / "splits.json").read_text())["source_fingerprint"]
    table = pq.read_table(run.splits_dir / "val_test").to_pydict()
    spec = StageContext.for_config(cfg).input_spec
    batch = preprocess_image_batch(
        {"image": np.array(table["image"], dtype=object), "label_id": np.array(table["label_id"])}, spec
    )
    with torch.no_grad():
        bundle_logits = bundle.model(**model_inputs({"pixel_values": torch.as_tensor(batch["pixel_values"])}, spec))
    bundle_logits = bundle_logits.numpy()
    run_logits, run_labels = load_predictions(run, "val_test", "evaluate")
    order_bundle = np.lexsort((bundle_logits[:, 0], batch["labels"]))
    order_run = np.lexsort((run_logits[:, 0], run_labels))
    np.testing.assert_allclose(bundle_logits[order_bundle], run_logits[order_run], atol=1e-5)
    decisions = bundle.policy.decide(bundle.policy.calibrated(bundle_logits).max(axis=1))
    assert float((decisions == "accept").mean()) == pytest.approx(metrics["policy"]["coverage"])


def test_run_pipeline_skips_what_is_complete(calibrated, tmp_path: Path) -> None:

    cfg, run, _ = calibrated
    if run.stage_info("insights").get("status") != "complete":
        INSIGHTS.run(StageContext(cfg, run))
    EXPORT.run(StageContext(cfg, run))
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.root, copy.root)
    screen = io.StringIO()
    console = Console(screen, screen, None, interactive=False, verbose=False)
    run_pipeline(StageContext(cfg, copy, console))
    lines = screen.getvalue().splitlines()
    assert all("skipped" in line for line in lines) and len(lines) == len(STAGES) == 6
    # a new policy invalidates calibrate and everything after it, not the training
    changed = cfg.model_copy(deep=True)
    changed.calibration.policy = "threshold"
    screen.seek(0)
    screen.truncate()
    stages = run_pipeline(StageContext(changed, copy, console))
    lines = screen.getvalue().splitlines()
    assert [line.split()[1] for line in lines if "skipped" in line] == ["splits", "train"]
    assert [line.split()[1] for line in lines if "done in" in line] == ["calibrate", "evaluate", "insights", "export"]
    assert all(stages[s]["status"] == "complete" for s in ("calibrate", "evaluate", "insights", "export"))
    assert json.loads((copy.root / "bundle" / "policy.json").read_text())["rule"] == "threshold"
    # the storyboard follows the new policy: a threshold has no assist band
    board = json.loads((copy.root / "insights" / "storyboard.json").read_text())
    assert board["rule"] == "threshold" and not board["categories"]["assist"]["available"]
    # a setting of the insights alone recomputes the insights (and what follows), not the calibration
    fewer = changed.model_copy(deep=True)
    fewer.insights.examples_per_category = 2
    screen.seek(0)
    screen.truncate()
    run_pipeline(StageContext(fewer, copy, console))
    lines = screen.getvalue().splitlines()
    assert [line.split()[1] for line in lines if "done in" in line] == ["insights", "export"]
    board = json.loads((copy.root / "insights" / "storyboard.json").read_text())
    assert all(len(c["examples"]) <= 2 for c in board["categories"].values())


def test_calibration_set_too_small_is_a_user_error(smoke_run, tmp_path: Path) -> None:
    cfg, run = smoke_run
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.root, copy.root)
    strict = cfg.model_copy(deep=True)
    strict.calibration.temperature.min_samples = 10_000
    with pytest.raises(UserError, match=r"val_calib has \d+ samples; temperature scaling needs at least 10000"):
        CALIBRATE.run(StageContext(strict, copy))
    assert copy.stage_info("calibrate")["status"] == "failed"
