"""The one line the summary adds when a model does not beat its linear reference."""

from __future__ import annotations

from pathlib import Path

from ray_app.config import load_config
from ray_app.console import insight_rows
from ray_app.insights.reference import advice_when_behind
from ray_app.runs import Run
from tests.helpers.configs import SMOKE


def test_advice_names_the_first_thing_to_try() -> None:
    cfg = load_config(SMOKE)  # 5 epochs, a fixed lr, a backbone from a config dict
    assert advice_when_behind(0.95, 0.93, cfg, 5, 2) is None  # ahead: nothing to say
    still_improving = advice_when_behind(0.90, 0.93, cfg, cfg.training.epochs, cfg.training.epochs - 1)
    assert still_improving == "0.030 behind the reference and still improving at its last epoch: train longer (-o training.epochs=10)"
    plateaued = advice_when_behind(0.90, 0.93, cfg, cfg.training.epochs, 1)
    assert "-o training.lr=auto" in plateaued and "pretrained backbone" in plateaued
    searched = load_config(SMOKE, ["training.lr=auto"])
    assert "pretrained backbone (model.backbone.id" in advice_when_behind(0.90, 0.93, searched, 5, 1)
    stopped_early = advice_when_behind(0.90, 0.93, cfg, 3, 2)  # early stopping ended it: not "train longer"
    assert "train longer" not in stopped_early


def test_the_summary_shows_it_under_the_reference(tmp_path: Path) -> None:
    cfg = load_config(SMOKE, [f"storage.root={tmp_path}"])
    run = Run.for_config(cfg)
    run.prepare(cfg)
    with run.stage("train", "f") as details:
        details.update(epochs_run=5, best_epoch=1)
    with run.stage("insights", "f") as details:
        details.update(model_accuracy=0.90, reference={"val_test_accuracy": 0.93, "kind": "logistic regression", "C": 1.0})
    rows = dict(insight_rows(run))
    assert rows["linear reference"].endswith("vs 0.9000 for this run")
    assert rows["to do"].startswith("0.030 behind the reference: let a range test choose the learning rate")
