"""The sweep file: dimensions, which config fields a sweep may vary, value checks
against the config schema, and the trial run names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_app.config import AppConfig, load_config, run_name, validate_config
from ray_app.errors import ConfigError
from ray_app.sweep.space import Dimension, SweepConfig, load_sweep, sweep_name_pattern, sweepable_fields, trial_config
from tests.helpers.configs import REPO, SMOKE

SWEEP_PRESETS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def _space_file(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _base() -> dict:
    return load_config(SMOKE).resolved_dict()


@pytest.mark.parametrize("preset", SWEEP_PRESETS, ids=lambda p: p.name)
def test_sweep_presets_validate_against_the_config_their_command_names(preset: Path) -> None:
    command = preset.read_text().splitlines()[0].split()
    assert command[:3] == ["#", "ray-app", "sweep"] and command[4:6] == ["--space", f"configs/sweeps/{preset.name}"]
    sweep = load_sweep(preset, load_config(REPO / command[3]).resolved_dict())
    assert sweep.space


def test_sweepable_fields_are_training_and_model_fields_but_not_inputs() -> None:
    fields = set(sweepable_fields())
    assert {"training.lr", "training.weight_decay", "training.epochs", "training.peft.r", "training.peft.alpha",
            "model.head", "model.freeze_backbone", "training.ema.decay"} <= fields
    assert not [f for f in fields if f.startswith(("model.backbone", "model.preprocessing", "data", "seed", "scaling"))]
    assert "training.peft" not in fields  # a section, not a field


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("training.lrr", "space key 'training.lrr' is not a config field; did you mean 'training.lr'?"),
        ("data.splits.max_samples", "a sweep varies training, model fields only"),
        ("seed", "a sweep varies training, model fields only"),
        ("model.backbone.config", "a sweep varies training, model fields only"),
        ("training.ema", "space key 'training.ema' is a section; search its fields instead: training.ema.enabled, training.ema.decay"),
    ],
)
def test_a_key_that_is_not_a_sweepable_field_is_named_with_a_fix(tmp_path: Path, key: str, message: str) -> None:
    path = _space_file(tmp_path, {"space": {key: {"choice": [1, 2]}}})
    with pytest.raises(ConfigError) as info:
        load_sweep(path, _base())
    assert info.value.exit_code == 2
    assert message in "\n".join(info.value.problems)


def test_every_value_a_dimension_can_produce_is_checked_against_the_schema(tmp_path: Path) -> None:
    path = _space_file(tmp_path, {"space": {
        "training.lr": {"grid": [0.01, -1.0]},
        "training.epochs": {"randint": [0, 3]},
        "training.peft.r": {"choice": [4, 8]},  # the smoke config trains in baseline mode
    }})
    with pytest.raises(ConfigError) as info:
        load_sweep(path, _base())
    problems = "\n".join(info.value.problems)
    assert "space training.lr=-1.0: training.lr: Input should be greater than 0" in problems
    assert "space training.epochs=0: training.epochs: Input should be greater than or equal to 1" in problems
    assert "space training.peft.r=4:" in problems and "training.peft applies to training.mode: peft only" in problems


def test_values_are_checked_with_the_other_keys_at_their_first_value(tmp_path: Path) -> None:
    # peft settings are valid once training.mode (first value: peft) is swept too.
    path = _space_file(tmp_path, {"space": {
        "training.mode": {"choice": ["peft"]},
        "training.peft.r": {"choice": [4, 8]},
    }})
    assert set(load_sweep(path, _base()).space) == {"training.mode", "training.peft.r"}


@pytest.mark.parametrize(
    ("dimension", "message"),
    [
        ({"choice": [1], "grid": [2]}, "give exactly one of"),
        ({}, "give exactly one of"),
        ({"choice": []}, "choice needs at least one value"),
        ({"loguniform": [0.0, 1.0]}, "loguniform: low must be > 0"),
        ({"uniform": [0.5, 0.1]}, "uniform: low must be below high"),
    ],
)
def test_bad_dimensions(dimension: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Dimension.model_validate(dimension)


def test_an_empty_space_and_unknown_sweep_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="space is empty"):
        load_sweep(_space_file(tmp_path, {"space": {}}), _base())
    with pytest.raises(ConfigError, match="num_sampels: unknown key; did you mean 'num_samples'"):
        load_sweep(_space_file(tmp_path, {"space": {"training.lr": {"choice": [0.1]}}, "num_sampels": 2}), _base())


def test_randint_includes_its_upper_end() -> None:
    domain = Dimension(randint=(2, 3)).to_tune()
    assert sorted({domain.sample() for _ in range(200)}) == [2, 3]


def test_trial_names_show_every_swept_key() -> None:
    assert sweep_name_pattern("smoke_{mode}_s{seed}", ["training.lr", "training.weight_decay"]) == (
        "smoke_{mode}_s{seed}_lr{training.lr}_weight_decay{training.weight_decay}"
    )
    # Already shown: not repeated. Two keys with one leaf name: the full path tells them apart.
    assert sweep_name_pattern("x_lr{training.lr}", ["training.lr"]) == "x_lr{training.lr}"
    assert sweep_name_pattern("x", ["training.peft.r", "model.r"]) == "x_training-peft-r{training.peft.r}_model-r{model.r}"


def test_trial_config_sets_nested_values_and_the_sweep_pattern() -> None:
    base = _base()
    pattern = sweep_name_pattern(base["name_pattern"], ["training.mode", "training.peft.r"])
    raw = trial_config(base, {"training.mode": "peft", "training.peft.r": 4}, pattern)
    cfg = validate_config(raw)
    assert isinstance(cfg, AppConfig) and cfg.training.peft is not None and cfg.training.peft.r == 4
    assert run_name(cfg) == "smoke_vit_peft_s0_r4"
    assert base["training"]["mode"] == "baseline"  # the base is not modified


def test_sweep_config_defaults() -> None:
    sweep = SweepConfig.model_validate({"space": {"training.lr": {"loguniform": [1e-4, 1e-2]}}})
    assert (sweep.num_samples, sweep.scheduler.kind, sweep.scheduler.grace_period, sweep.metric) == (4, "asha", 1, None)
