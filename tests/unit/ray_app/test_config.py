"""The application config: presets, overrides, every problem at once, run names,
fingerprints, descriptions, local paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_app.config import AppConfig, load_config, parse_overrides, run_name, validate_config
from ray_app.errors import ConfigError
from tests.helpers.configs import REPO, SMOKE

# configs/serve/ holds Ray Serve config files (tests/unit/serve/test_serve.py checks them)
# and configs/sweeps/ search spaces (tests/unit/ray_app/test_sweep.py)
PRESETS = sorted(p for p in (REPO / "configs").glob("**/*.yaml") if p.parent.name not in ("serve", "sweeps"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_validates_and_names_its_command(preset: Path) -> None:
    cfg = load_config(preset)
    assert isinstance(cfg, AppConfig)
    first_line = preset.read_text().splitlines()[0]
    assert first_line.startswith("# ray-app "), f"{preset.name} must start with the command that runs it"


def test_presets_exist() -> None:
    assert {p.name for p in PRESETS} >= {"digits.yaml", "digits_lora.yaml", "smoke.yaml", "text_smoke.yaml"}


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = load_config(SMOKE, ["training.epochs=5", "training.lr=1e-4", "model.freeze_backbone=true"])
    assert cfg.training.epochs == 5
    assert cfg.training.lr == pytest.approx(1e-4)
    assert cfg.model.freeze_backbone is True


def test_all_errors_reported_at_once_with_paths() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["training.epochs=zero", "training.lrr=0.1", "scaling.num_workers=0", "bad"])
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4
    assert "override 'bad': expected dotted.key=value" in problems
    assert "training.epochs: Input should be a valid integer" in problems
    assert "training.lrr: unknown key; did you mean 'lr'?" in problems
    assert "scaling.num_workers: Input should be greater than or equal to 1" in problems


def test_unknown_top_level_key_lists_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE.read_text()), "trainng": {}}))
    with pytest.raises(ConfigError, match="trainng: unknown key; did you mean 'training'"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_bad_override_value_yaml() -> None:
    parsed, problems = parse_overrides(["a.b=[1, 2", "c=3", "=4", "d..e=1"])
    assert parsed == [(["c"], 3)]
    assert len(problems) == 3


def test_override_into_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(SMOKE, ["seed.x=1"])


def test_cross_field_rules() -> None:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["ratios"] = {"train": 0.5, "val_select": 0.2, "val_calib": 0.2, "val_test": 0.2}
    raw["model"]["backbone"]["id"] = "some/model"
    raw["data"]["source"] = {"kind": "parquet", "path": "x.parquet"}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    text = "\n".join(info.value.problems)
    assert "must sum to 1.0, got 1.1" in text
    assert "exactly one of model.backbone.id or model.backbone.config" in text
    assert "exactly one of image_column or text_column" in text


def test_text_on_config_backbone_needs_tokenizer() -> None:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["source"] = {"kind": "csv", "path": "x.csv"}
    with pytest.raises(ConfigError, match="needs model.preprocessing.tokenizer"):
        validate_config(raw)


def test_run_name_pattern() -> None:
    cfg = load_config(REPO / "configs" / "digits.yaml", ["training.lr=0.0005", "seed=3"])
    assert run_name(cfg) == "sklearn_digits_convnext_baseline_lr0.0005_s3"
    cfg = load_config(SMOKE, ["name_pattern='{backbone}/{training.batch_size}'"])
    assert run_name(cfg) == "vit-h32-l2-16"  # path separators never reach the file system


def test_unknown_name_placeholder() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \['nope'\]"):
        load_config(SMOKE, ["name_pattern=run_{nope}"])
    # Unquoted, {nope} is a YAML mapping: reported as a type error on the field.
    with pytest.raises(ConfigError, match="name_pattern: Input should be a valid string"):
        load_config(SMOKE, ["name_pattern={nope}"])
    with pytest.raises(ConfigError, match="quote strings that look like YAML"):
        load_config(SMOKE, ["name_pattern=[x"])


def test_fingerprint_tracks_sections() -> None:
    a = load_config(SMOKE)
    b = load_config(SMOKE, ["training.epochs=7"])
    assert a.fingerprint("seed", "data") == b.fingerprint("seed", "data")
    assert a.fingerprint() != b.fingerprint()


def test_every_field_has_a_description() -> None:
    from pydantic import BaseModel

    seen: set[type] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            for candidate in (annotation, *getattr(annotation, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    walk(candidate)

    walk(AppConfig)
    assert len(seen) >= 10


def test_family_of_a_local_backbone_is_its_model_type(tmp_path: Path) -> None:
    backbone = tmp_path / "all-MiniLM-L6-v2"
    backbone.mkdir()
    (backbone / "config.json").write_text('{"model_type": "bert", "hidden_size": 384}')
    reviews = tmp_path / "realtext.csv"
    cfg = validate_config({
        "name_pattern": "{dataset}_{family}_{backbone}_{mode}_s{seed}",
        "data": {"source": {"kind": "csv", "path": str(reviews)}},
        "model": {"backbone": {"id": str(backbone)}},
        "training": {"mode": "peft"},
    })
    assert run_name(cfg) == "realtext_bert_all-MiniLM-L6-v2_peft_s0"
    (backbone / "config.json").unlink()  # no config to read: the directory's name is all there is
    assert run_name(cfg) == "realtext_all_all-MiniLM-L6-v2_peft_s0"


def test_local_paths_are_checked_before_anything_heavy(tmp_path: Path) -> None:
    from ray_app.config import check_paths_exist
    from ray_app.errors import DataError, UserError

    check_paths_exist(load_config(SMOKE))  # digits: nothing to check
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"data.source.path '{missing}' does not exist"):
        check_paths_exist(load_config(SMOKE, ["data.source.kind=image_folder", f"data.source.path={missing}"]))
    text = ["data.source.kind=csv", f"data.source.path={tmp_path}", f"model.preprocessing.tokenizer={missing}"]
    with pytest.raises(UserError, match=f"model.preprocessing.tokenizer '{missing}' is not a directory"):
        check_paths_exist(load_config(SMOKE, text))
    with pytest.raises(UserError, match=f"model.backbone.id '{missing}' is not a directory"):
        check_paths_exist(load_config(SMOKE, ["model.backbone.config=null", f"model.backbone.id={missing}"]))
    # a bare org/name may be a hub id: left to the loader
    check_paths_exist(load_config(SMOKE, ["model.backbone.config=null", "model.backbone.id=org/name"]))
