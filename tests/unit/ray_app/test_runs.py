"""A run directory: the layout runs written before still have, the metadata of its
stages, what earlier stages left, finding runs, replacing a set of files whole, and a
launch meeting a run of its name (never retrained with another config unasked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from calibration.policy import Policy
from ray_app.config import run_name
from ray_app.errors import NotReady, RunExists, UserError
from ray_app.existing_runs import claim_run
from ray_app.runs import (
    InsightsLayout,
    Run,
    find_runs,
    resolve_run,
    staged_directory,
    write_json,
)
from tests.helpers.configs import smoke_config


def test_the_layout_is_the_one_runs_were_written_with(tmp_path: Path) -> None:
    run = Run(tmp_path / "r")
    paths = {
        run.config_path: "config.yaml", run.metadata_path: "metadata.json", run.log_path: "logs/run.log",
        run.splits_dir: "splits", run.train.metrics: "train/metrics.jsonl", run.train.metrics_csv: "train/metrics.csv",
        run.train.progress: "train/progress.json", run.train.budget: "train/budget.json",
        run.train.model_dir: "train/model", run.train.predictions("val_calib"): "train/predictions/val_calib.npz",
        run.train.ray_storage: "train/ray_storage", run.calibration.policy: "calibration/policy.json",
        run.calibration.temperature: "calibration/temperature.json",
        run.calibration.thresholds: "calibration/thresholds.json", run.calibration.guardrail: "calibration/guardrail.json",
        run.calibration.risk_control: "calibration/risk_control.json", run.calibration.views: "calibration/views.json",
        run.calibration.report: "calibration/report.md", run.calibration_tune_dir: "calibration_tune",
        run.evaluation: "eval/metrics.json", run.insights.outcomes: "insights/outcomes.npz",
        run.insights.map("pca", "k"): "insights/maps/pca_k.json", run.insights.storyboard: "insights/storyboard.json",
        run.insights.reference: "insights/reference.json", run.insights.summary: "insights/summary.json",
        run.insights.report: "insights/report.md", run.insights.meaning_map_png: "insights/meaning_map.png",
        run.insights.storyboard_png: "insights/storyboard.png", run.bundle_dir: "bundle",
    }
    assert {str(path.relative_to(run.root)): rel for path, rel in paths.items()} == {rel: rel for rel in paths.values()}
    files = run.train.history_files()
    assert Path(files.metrics_jsonl).is_absolute() and files.progress.endswith("train/progress.json")


def test_a_run_of_a_config_lives_under_its_storage_root(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    run = Run.for_config(cfg)
    assert run.root == tmp_path / "smoke_vit_baseline_s0" and run.name == "smoke_vit_baseline_s0"
    assert not run.exists() and run.metadata() == {} and run.config() is None
    run.prepare(cfg)
    assert run.exists() and run.config() == cfg
    meta = run.metadata()
    assert meta["name"] == run.name and meta["config_fingerprint"] == cfg.fingerprint() and "torch" in meta["versions"]


def test_stage_status_goes_running_then_complete_or_failed(tmp_path: Path) -> None:
    run = Run(tmp_path / "r")
    run.root.mkdir()
    with run.stage("train", "f1") as details:
        assert run.stage_info("train")["status"] == "running"
        details["epochs_run"] = 2
    assert run.stage_complete("train", "f1") and not run.stage_complete("train", "other")
    assert run.stage_info("train")["epochs_run"] == 2 and run.stage_info("train")["seconds"] >= 0
    with pytest.raises(ValueError), run.stage("calibrate", "f2") as details:
        details["partial"] = True
        raise ValueError("no")
    info = run.stage_info("calibrate")
    assert info["status"] == "failed" and info["error"] == "ValueError: no" and info["partial"] is True
    with pytest.raises(KeyboardInterrupt), run.stage("evaluate", "f3"):
        raise KeyboardInterrupt
    assert run.stage_info("evaluate")["status"] == "interrupted"  # a stop, not a failure


def test_not_calibrated_and_not_trained_say_which_command_to_run(tmp_path: Path) -> None:
    run = Run(tmp_path / "r")
    with pytest.raises(NotReady, match=r"run 'r' has no policy .*; calibrate it first: ray-app calibrate r"):
        run.policy()
    with pytest.raises(NotReady, match="run 'r' has no trained model .*train it first"):
        run.require_model()
    write_json(run.calibration.policy, Policy(rule="threshold", threshold=0.7).model_dump())
    assert run.policy() == Policy(rule="threshold", threshold=0.7)
    run.train.model_dir.mkdir(parents=True)
    assert run.require_model() == run.train.model_dir
    assert NotReady.http_status == 409 and issubclass(NotReady, UserError)


def test_staged_directory_replaces_the_old_files_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "insights"
    final.mkdir()
    (final / "old.json").write_text("{}")
    with pytest.raises(RuntimeError), staged_directory(final) as staging:
        InsightsLayout(staging).summary.write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["insights"]  # no staging left behind
    assert [p.name for p in final.iterdir()] == ["old.json"]  # the old set is untouched
    with staged_directory(final) as staging:
        InsightsLayout(staging).summary.write_text("{}")
    assert [p.name for p in final.iterdir()] == ["summary.json"]


def test_write_json_is_atomic_and_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "metrics.json"
    write_json(path, {"b": 1.5, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_runs_are_found_by_scanning_and_resolved_by_name(tmp_path: Path) -> None:
    for name in ("b", "a", "nested/c"):
        Run(tmp_path / name).root.mkdir(parents=True)
        Run(tmp_path / name).metadata_path.write_text("{}")
    storage = Run(tmp_path / "a").train.ray_storage / "x"
    storage.mkdir(parents=True)
    (storage / "metadata.json").write_text("{}")  # Ray's files are not runs
    assert [r.name for r in find_runs(tmp_path)] == ["a", "b", "c"]
    assert resolve_run("c", tmp_path).root == tmp_path / "nested" / "c"
    assert resolve_run(str(tmp_path / "b"), Path("/elsewhere")).name == "b"
    with pytest.raises(UserError, match=r"no run named 'd' under .*runs found: a, b, c"):
        resolve_run("d", tmp_path)


# --- a launch meeting a run of its name ------------------------------------------------


def _trained_run(root: Path, *overrides: str) -> Run:
    """A run as the splits stage leaves it: config.yaml and metadata of `overrides`."""
    cfg = smoke_config(root, *overrides)
    run = Run.for_config(cfg)
    run.prepare(cfg)
    (run.train.metrics.parent).mkdir(parents=True)
    run.train.metrics.write_text('{"epoch": 0}\n')
    return run


def _recorded_lr(run: Run) -> float:
    return float(yaml.safe_load(run.config_path.read_text())["training"]["lr"])


def test_a_finished_run_is_not_retrained_with_another_config_unasked(tmp_path: Path) -> None:
    run = _trained_run(tmp_path, "training.lr=0.001")
    changed = smoke_config(tmp_path, "training.lr=0.01")
    assert run_name(changed) == run.name  # lr is not in the name: the same directory
    with pytest.raises(RunExists) as refused:
        claim_run(changed)
    message = str(refused.value)
    assert "training.lr: 0.001 -> 0.01" in message
    assert all(f"--on-exists {choice}" in message for choice in ("new", "resume", "replace"))
    assert refused.value.http_fields() == {"run": run.name, "link": f"/runs/{run.name}"}
    assert _recorded_lr(run) == 0.001 and run.train.metrics.is_file()  # nothing touched
    # The control plane refuses an existing run even with the same config, and words the choices as JSON.
    with pytest.raises(RunExists, match='"on_exists": "new"'):
        claim_run(smoke_config(tmp_path, "training.lr=0.001"), api=True)


def test_the_same_config_continues_its_run_on_the_cli(tmp_path: Path) -> None:
    run = _trained_run(tmp_path)
    same = smoke_config(tmp_path)
    assert claim_run(same) is same and run.train.metrics.is_file()


def test_new_trains_under_the_next_free_name(tmp_path: Path) -> None:
    run = _trained_run(tmp_path, "training.lr=0.001")
    renamed = claim_run(smoke_config(tmp_path, "training.lr=0.01"), "new")
    assert run_name(renamed) == f"{run.name}-2" and renamed.training.lr == 0.01
    Run.for_config(renamed).prepare(renamed)
    assert run_name(claim_run(smoke_config(tmp_path), "new", taken=frozenset({f"{run.name}-3"}))) == f"{run.name}-4"
    assert _recorded_lr(run) == 0.001


def test_resume_records_the_new_config_before_any_stage_runs(tmp_path: Path) -> None:
    run = _trained_run(tmp_path, "training.lr=0.001")
    changed = smoke_config(tmp_path, "training.lr=0.01")
    assert claim_run(changed, "resume") is changed
    assert _recorded_lr(run) == 0.01  # config.yaml says what the run trains from now on
    assert run.metadata()["config_fingerprint"] == changed.fingerprint()
    assert run.train.metrics.is_file()  # earlier outputs stay for the stages to judge


def test_replace_deletes_the_run_first(tmp_path: Path) -> None:
    run = _trained_run(tmp_path)
    claim_run(smoke_config(tmp_path, "training.lr=0.01"), "replace")
    assert not run.root.exists()
    # A directory with no metadata.json is not a run: nothing to refuse, nothing deleted.
    (tmp_path / run.name / "notes").mkdir(parents=True)
    claim_run(smoke_config(tmp_path), "replace")
    assert (tmp_path / run.name / "notes").is_dir()
