"""The stage records and the loop over them, without Ray: what each stage depends on,
the line that sums it up, and which stages `run_pipeline` runs or skips."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from ray_app.console import Console
from ray_app.runs import Run
from ray_app.stages import STAGE_BY_NAME, STAGE_NAMES, STAGES, Stage, run_pipeline
from ray_app.stages.context import StageContext
from tests.helpers.configs import smoke_config

# What the fake stages below did, in order: (stage name, run name).
CALLS: list[tuple[str, str]] = []


def _recorder(name: str) -> Any:
    def record(ctx: StageContext) -> dict[str, Any]:
        """A stage's work, as a record's runner names it: note the call, mark it complete."""
        stage = STAGE_BY_NAME[name]
        CALLS.append((name, ctx.run.name))
        with ctx.run.stage(name, stage.fingerprint(ctx.cfg)) as details:
            details["seen"] = True
        return ctx.run.stage_info(name)

    return record


for _name in STAGE_NAMES:
    globals()[f"record_{_name}"] = _recorder(_name)


def fake(stage: Stage) -> Stage:
    """The stage's record with the work replaced by `record_<name>` above."""
    return Stage(stage.name, stage.sections, f"{__name__}:record_{stage.name}", lambda info: "ran", ())


class ScreenConsole(Console):
    """A real console writing to a string."""

    def __init__(self) -> None:
        self.screen = io.StringIO()
        super().__init__(self.screen, self.screen, None, interactive=False, verbose=False)


def context(tmp_path: Path, *overrides: str) -> StageContext:
    cfg = smoke_config(tmp_path, *overrides)
    ctx = StageContext.for_config(cfg, ScreenConsole())
    ctx.run.prepare(cfg)
    return ctx


def test_the_stages_in_order_each_with_a_runner_in_its_own_module() -> None:
    assert STAGE_NAMES == ("splits", "train", "calibrate", "evaluate", "insights", "export")
    for stage in STAGES:
        module, _, function = stage.runner.partition(":")
        assert module == f"ray_app.stages.{stage.name}" and function == "run"
    assert [s.name for s in STAGES if s.progress == "epochs"] == ["train"]


def test_fingerprints_follow_the_sections_each_stage_depends_on(tmp_path: Path) -> None:
    base = smoke_config(tmp_path)
    policy = smoke_config(tmp_path, "calibration.policy=threshold")
    epochs = smoke_config(tmp_path, "training.epochs=7")
    insights = smoke_config(tmp_path, "insights.max_points=11")
    same = {s.name for s in STAGES if s.fingerprint(base) == s.fingerprint(policy)}
    assert same == {"splits", "train"}  # a new policy recalibrates without retraining
    assert {s.name for s in STAGES if s.fingerprint(base) == s.fingerprint(epochs)} == {"splits"}
    assert {s.name for s in STAGES if s.fingerprint(base) != s.fingerprint(insights)} == {"insights"}


def test_stage_summaries_come_from_the_recorded_details() -> None:
    summary = {name: STAGE_BY_NAME[name].summary for name in STAGE_NAMES}
    assert summary["splits"]({"counts": {"val_test": 3, "train": 10, "val_calib": 2, "val_select": 2}}) == (
        "17 rows: train 10, val_select 2, val_calib 2, val_test 3"
    )
    train = {"epochs_run": 5, "best_epoch": 3, "best": {"val_select/loss": 0.4, "val_select/accuracy": 0.91}}
    assert summary["train"](train) == "5 epoch(s), best epoch 4 (val_select accuracy 0.9100)"
    assert summary["train"]({**train, "resumed_at": [2]}).endswith(" · resumed at epoch(s) [2]")
    assert summary["export"]({"model_version": "r@abc"}) == "bundle verified, r@abc"
    assert summary["calibrate"]({}) == ""  # a stage that recorded nothing says nothing
    assert summary["evaluate"]({"accuracy": 0.5}) == ""  # nor one that recorded part of it
    assert summary["insights"]({"disabled": True}) == "off (insights.enabled: false)"


def test_the_pipeline_skips_complete_stages_until_one_runs(tmp_path: Path) -> None:
    stages = tuple(fake(s) for s in STAGES)
    ctx = context(tmp_path)
    CALLS.clear()
    run_pipeline(ctx, stages)
    assert [name for name, _ in CALLS] == list(STAGE_NAMES)

    CALLS.clear()
    again = context(tmp_path)
    run_pipeline(again, stages)
    assert CALLS == []  # everything complete for this config
    assert again.console.screen.getvalue().count("complete for this config, skipped") == 6  # type: ignore[attr-defined]

    CALLS.clear()
    recalibrate = context(tmp_path, "calibration.policy=threshold")
    assert recalibrate.run.root == ctx.run.root
    run_pipeline(recalibrate, stages)
    # splits and train still match; calibrate changed, and everything after it reruns
    assert [name for name, _ in CALLS] == ["calibrate", "evaluate", "insights", "export"]


def test_rerun_from_forces_that_stage_and_what_follows(tmp_path: Path) -> None:
    stages = tuple(fake(s) for s in STAGES[:3])
    run_pipeline(context(tmp_path), stages)
    CALLS.clear()
    run_pipeline(context(tmp_path), stages, rerun_from="train")
    assert [name for name, _ in CALLS] == ["train", "calibrate"]


def test_a_stage_that_fails_stops_the_pipeline_and_says_so(tmp_path: Path) -> None:
    failing = Stage("train", STAGES[1].sections, "ray_app.stages.context:no_such_function", lambda info: "")
    ctx = context(tmp_path)
    CALLS.clear()
    with pytest.raises(AttributeError):
        run_pipeline(ctx, (fake(STAGES[0]), failing, fake(STAGES[2])))
    assert [name for name, _ in CALLS] == ["splits"]
    assert ctx.console.screen.getvalue().splitlines()[-1].startswith("[2/3] train     failed after ")  # type: ignore[attr-defined]


def test_the_context_derives_each_value_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainers.preprocess

    calls = []
    resolve = trainers.preprocess.resolve_image_spec
    monkeypatch.setattr(trainers.preprocess, "resolve_image_spec", lambda model: calls.append(1) or resolve(model))
    ctx = StageContext.for_config(smoke_config(tmp_path))
    ctx.check()
    assert ctx.input_spec is ctx.input_spec and len(calls) == 1
    assert ctx.init_backbone is None and ctx.peft_plan is None  # baseline, no init_from
    peft = StageContext.for_config(smoke_config(tmp_path, "training.mode=peft"))
    assert peft.peft_plan is not None and "adapters on" in peft.peft_plan.describe()
    assert isinstance(ctx.run, Run) and ctx.run.name == "smoke_vit_baseline_s0"
