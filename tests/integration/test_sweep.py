"""`ray-app sweep` on the session's Ray: four smoke trials, each a registry run; ASHA
stops the ones that cannot keep up; the best trial's config reproduces its training."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_app.cli import main
from ray_app.config import load_config
from ray_app.runs import Run, find_runs
from tests.helpers.configs import SMOKE

GOOD_LRS = (0.003, 0.002)
# Learning rates too small to move the weights: after one epoch these trials are still
# at chance, far below the good ones.
STALLED_LRS = (1e-7, 2e-7)
# One trial at a time, in grid order: each stalled trial reaches ASHA's first rung
# (epoch 1) after a good trial has recorded its value there, so ASHA must stop it.
SPACE = {
    "space": {"training.lr": {"grid": [GOOD_LRS[0], STALLED_LRS[0], GOOD_LRS[1], STALLED_LRS[1]]}},
    "num_samples": 1,
    "max_concurrent_trials": 1,
    "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
}
EPOCHS = 5  # configs/smoke.yaml


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sweep")
    space = root / "lr_grid.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sweep", str(SMOKE), "--space", str(space), "-o", f"storage.root={root / 'runs'}"])
    directory = root / "runs" / "sweeps" / "lr_grid"
    with (directory / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {"code": code, "printed": printed.getvalue(), "root": root / "runs", "dir": directory, "rows": rows}


def _row(sweep: dict[str, Any], lr: float) -> dict[str, str]:
    return next(r for r in sweep["rows"] if float(r["training.lr"]) == lr)


def test_every_trial_is_a_run_named_by_the_pattern(sweep: dict[str, Any]) -> None:
    assert sweep["code"] == 0
    assert len(sweep["rows"]) == 4
    names = {r.name for r in find_runs(sweep["root"])}
    assert names == {f"smoke_vit_baseline_s0_lr{lr:g}" for lr in (*GOOD_LRS, *STALLED_LRS)}
    for name in names:
        run = Run(sweep["root"] / name)
        assert run.stage_info("splits")["status"] == "complete"
        # All trials trained and selected on the same rows: the shared splits.
        assert (run.splits_dir / "splits.json").read_text() == (sweep["dir"] / "splits" / "splits.json").read_text()


def test_asha_stops_the_stalled_trials_after_one_epoch(sweep: dict[str, Any]) -> None:
    for lr in STALLED_LRS:
        row = _row(sweep, lr)
        assert (row["status"], row["epochs"]) == ("stopped by ASHA", "1")
        run = Run(sweep["root"] / row["run"])
        assert run.stage_info("train")["status"] == "stopped"
        assert "stopped by ASHA after 1 epoch(s)" in run.stage_info("train")["error"]
        assert not (run.train.model_dir).exists()
    # Every epoch went to Tune: the first good trial (alone on the rungs) ran them all
    # and finished as a complete run with its model and exported logits.
    first = _row(sweep, GOOD_LRS[0])
    assert first["status"] == "complete" and first["epochs"] == str(EPOCHS)
    run = Run(sweep["root"] / first["run"])
    assert run.stage_info("train")["status"] == "complete"
    assert (run.train.model_dir / "model.safetensors").is_file()
    assert {p.name for p in (run.train.predictions_dir).iterdir()} == {"val_calib.npz", "val_test.npz"}


def test_results_table_ranks_trials_and_the_best_is_printed(sweep: dict[str, Any]) -> None:
    values = [float(r["best val_select/accuracy"]) for r in sweep["rows"]]
    assert values == sorted(values, reverse=True)
    best = sweep["rows"][0]
    assert float(best["training.lr"]) in GOOD_LRS
    # The table's value is the best epoch of that run's own metrics history.
    history = [json.loads(x) for x in (sweep["root"] / best["run"] / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(h["val_select/accuracy"] for h in history) == pytest.approx(float(best["best val_select/accuracy"]), abs=1e-4)
    assert all(float(_row(sweep, lr)["best val_select/accuracy"]) < values[0] for lr in STALLED_LRS)
    printed = sweep["printed"]
    assert "| trial | training.lr | epochs | best val_select/accuracy |" in printed
    assert f"best config ({sweep['dir'] / 'best.yaml'})" in printed
    assert (sweep["dir"] / "results.md").read_text().count("\n| ") == 5  # header + 4 trials
    summary = json.loads((sweep["dir"] / "sweep.json").read_text())
    assert summary["best"]["run"] == best["run"] and len(summary["trials"]) == 4


def test_best_config_reproduces_the_best_trial(sweep: dict[str, Any], tmp_path: Path) -> None:
    from ray_app.stages.context import StageContext
    from ray_app.stages.splits import ensure_splits
    from ray_app.stages.train import run_training

    best_yaml = sweep["dir"] / "best.yaml"
    assert best_yaml.read_text().startswith(f"# ray-app run {best_yaml}\n")
    best = sweep["rows"][0]
    cfg = load_config(best_yaml)
    assert Run.for_config(cfg).name == best["run"]  # `ray-app run best.yaml` finishes that run
    again = load_config(best_yaml, [f"storage.root={tmp_path}"])
    ctx = StageContext(again, Run.for_config(again))
    ensure_splits(ctx)
    run_training(ctx)
    run = ctx.run
    trial_history = (sweep["root"] / best["run"] / "train" / "metrics.jsonl").read_text().splitlines()
    new_history = run.train.metrics.read_text().splitlines()
    keys = ("epoch", "train/loss", "val_select/loss", "val_select/accuracy", "val_select/macro_f1")
    for trial_row, new_row in zip(map(json.loads, trial_history), map(json.loads, new_history), strict=True):
        assert {k: new_row[k] for k in keys} == pytest.approx({k: trial_row[k] for k in keys}, abs=1e-6)


def test_the_sweep_and_each_trial_keep_a_log(sweep: dict[str, Any]) -> None:
    sweep_log = (sweep["dir"] / "logs" / "sweep.log").read_text()
    assert "==== start: ray-app sweep" in sweep_log and "==== end: exit 0" in sweep_log
    assert "(RayTrainWorker pid=" in sweep_log  # the trials' workers, forwarded to the sweep's driver
    assert "Execution plan" not in sweep["printed"] and "TrainingReport(" not in sweep["printed"]
    for row in sweep["rows"]:
        trial_log = (sweep["root"] / row["run"] / "logs" / "run.log").read_text()
        assert "==== start: sweep trial {'training.lr': " in trial_log
        epochs = [x for x in trial_log.splitlines() if "[train]   epoch " in x or "[train] epoch " in x]
        assert len(epochs) == int(row["epochs"]), trial_log
        if row["status"].startswith("complete"):
            assert "==== end: trial done ====" in trial_log
        else:
            assert "stopped by ASHA after 1 epoch(s)" in trial_log
