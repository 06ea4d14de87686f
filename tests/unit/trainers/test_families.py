"""Model families: parameters, schemas, variant names, config sections both ways, the
models they build, and families registered by another installed package."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from ray_app.config import load_config, run_name, validate_config
from ray_app.errors import ConfigError
from ray_app.runs import Run
from tests.helpers.configs import REPO, SMOKE
from trainers.config import BackboneConfig
from trainers.families import (
    ConfigFamily,
    InvalidParams,
    family_and_params,
    family_of,
    family_registry,
    reload_families,
)
from trainers.model import backbone_config, backbone_skeleton, build_backbone, drop_pooler

PRESETS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
BUILT_PRESETS = [p for p in PRESETS if load_config(p).model.backbone.config is not None]  # not the pretrained ones
CONFIG_FAMILIES = ("vit", "dinov2", "dinov3_vit", "bert")
TINY_IMAGE = {"image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
# Tiny parameters of each built-in config family and an input batch for it.
TINY = {
    "vit": {**TINY_IMAGE, "intermediate_size": 64},
    "dinov2": {**TINY_IMAGE, "mlp_ratio": 2},
    "dinov3_vit": {**TINY_IMAGE, "intermediate_size": 64, "num_register_tokens": 2},
    "bert": {"vocab_size": 50, "max_position_embeddings": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


def family_inputs(name: str) -> dict[str, torch.Tensor]:
    if name == "bert":
        return {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    return {"pixel_values": torch.randn(2, 1, 8, 8)}


# --- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIG_FAMILIES)
def test_defaults_validate_and_are_the_hf_config_defaults(name: str) -> None:
    family = family_registry()[name]
    params = family.params_model()
    hf_defaults = AutoConfig.for_model(family.model_type)
    for field, value in params.model_dump().items():
        # A config leaving the key out and one writing the default build the same model.
        assert getattr(hf_defaults, field) == value, f"{name}.{field}: {value} here, {getattr(hf_defaults, field)} in transformers"


@pytest.mark.parametrize("name", CONFIG_FAMILIES)
def test_each_family_builds_the_model_its_params_describe(name: str) -> None:
    family = family_registry()[name]
    params = family.validate_params(TINY[name])
    model = family.create_model(params)
    assert model.config.model_type == family.model_type
    for field, value in params.model_dump().items():
        assert getattr(model.config, field) == value, field
    with torch.no_grad():
        hidden = model(**family_inputs(name)).last_hidden_state
    assert hidden.shape[0] == 2 and hidden.shape[-1] == 32


def test_schema_has_a_description_and_a_default_for_every_field() -> None:
    registry = family_registry()
    assert set(registry) >= {"vit", "dinov2", "dinov3_vit", "bert", "pretrained", "generic"}
    for family in registry.values():
        schema = family.params_schema()
        json.dumps(schema)  # a form gets it as JSON
        assert schema["type"] == "object" and schema["properties"], family.name
        for field, spec in schema["properties"].items():
            assert spec.get("description"), f"{family.name}.{field} has no description"
        required = set(schema.get("required", []))
        # The one field a pretrained directory or an unlisted architecture cannot default.
        assert required == {"pretrained": {"path"}, "generic": {"model_type"}}.get(family.name, set()), family.name
        assert all("default" in spec for field, spec in schema["properties"].items() if field not in required)
        assert schema["additionalProperties"] is (family.name != "pretrained")
        info = family.info()
        assert info.params_schema == schema and info.modality in ("image", "text", "any") and info.title


def test_bad_params_report_every_problem_at_once() -> None:
    vit = family_registry()["vit"]
    with pytest.raises(InvalidParams) as info:
        vit.validate_params({"hidden_size": -1, "patch_size": 0, "hidden_dropout_prob": 1.5})
    assert len(info.value.problems) == 3
    assert [p.split(":")[0] for p in info.value.problems] == ["patch_size", "hidden_size", "hidden_dropout_prob"]
    with pytest.raises(InvalidParams) as info:
        vit.validate_params({"hidden_size": 65, "num_attention_heads": 4, "image_size": 10, "patch_size": 4})
    problems = info.value.problems
    assert len(problems) == 2
    assert "hidden_size 65 is not a multiple of num_attention_heads 4" in problems[0]
    assert "image_size 10 is not a multiple of patch_size 4" in problems[1]


def test_dinov3_head_width_rule_is_what_the_model_needs() -> None:
    dinov3 = family_registry()["dinov3_vit"]
    bad = {**TINY["dinov3_vit"], "hidden_size": 36, "num_attention_heads": 6}  # 6 channels per head
    with pytest.raises(InvalidParams, match="hidden_size 36 / num_attention_heads 6 = 6 channels per head, not a multiple of 4"):
        dinov3.validate_params(bad)
    # Built anyway, the model breaks on its first forward: the rule is not arbitrary.
    model = AutoModel.from_config(AutoConfig.for_model("dinov3_vit", **bad))
    with pytest.raises(RuntimeError):
        model(pixel_values=torch.randn(1, 1, 8, 8))


def test_a_config_with_broken_family_rules_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["model.backbone.config.hidden_size=33", "model.backbone.config.image_size=10"])
    text = str(info.value)
    assert "model.backbone: vit parameters" in text
    assert "hidden_size 33 is not a multiple of num_attention_heads 2" in text
    assert "image_size 10 is not a multiple of patch_size 4" in text


def test_extra_hf_keys_pass_through_to_the_model() -> None:
    vit = family_registry()["vit"]
    params = vit.validate_params({**TINY["vit"], "layer_norm_eps": 1e-5, "hidden_act": "relu"})
    config = vit.hf_config(params)
    assert config.layer_norm_eps == 1e-5 and config.hidden_act == "relu"


# --- names and descriptions -------------------------------------------------------------


def test_variant_names() -> None:
    registry = family_registry()
    assert registry["vit"].variant_name(registry["vit"].validate_params(TINY["vit"])) == "vit-h32-l2"
    assert registry["dinov3_vit"].variant_name(TINY["dinov3_vit"]) == "dinov3_vit-h32-l2"
    assert registry["bert"].variant_name({"hidden_size": 48, "num_hidden_layers": 4}) == "bert-h48-l4"
    # Segments of values left to the default are left out: the names runs always had.
    assert registry["vit"].variant_name({"hidden_size": 48}) == "vit-h48"
    assert registry["vit"].variant_name({}) == "vit"
    assert registry["generic"].variant_name({"model_type": "deit", "hidden_size": 16}) == "deit-h16"
    assert registry["pretrained"].variant_name({"path": "/models/all-MiniLM-L6-v2/"}) == "all-MiniLM-L6-v2"


def test_describe_gives_the_size_facts_with_defaults_filled_in() -> None:
    registry = family_registry()
    assert registry["vit"].describe({"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}) == [
        "Hidden: 64", "Layers: 4", "Heads: 4",
    ]
    assert registry["bert"].describe({}) == ["Hidden: 768", "Layers: 12", "Heads: 12"]
    assert registry["generic"].describe({"model_type": "deit", "hidden_size": 16}) == ["Hidden: 16"]


def test_run_names_come_from_the_family() -> None:
    cfg = load_config(SMOKE, ["name_pattern='{family}_{backbone}'"])
    family, params = family_and_params(cfg.model.backbone)
    assert run_name(cfg) == f"{family.architecture(params)}_{family.variant_name(params)}" == "vit_vit-h32-l2"


# --- config sections both ways ----------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_params_of_and_backbone_section_round_trip_on_presets(preset: Path) -> None:
    backbone = load_config(preset).model.backbone
    family, params = family_and_params(backbone)
    section = family.backbone_section(params)
    assert section == backbone.model_dump(exclude_none=True)  # the preset's section, key for key
    again = family.params_of(BackboneConfig.model_validate(section))
    assert again == params and again.model_fields_set == params.model_fields_set


def test_family_of() -> None:
    assert family_of(load_config(REPO / "configs" / "digits.yaml").model.backbone).name == "convnext"
    assert family_of(load_config(REPO / "configs" / "digits_lora.yaml").model.backbone).name == "vit"
    assert family_of(load_config(REPO / "configs" / "text_smoke.yaml").model.backbone).name == "bert"
    assert family_of(BackboneConfig(id="/models/anything")).name == "pretrained"
    assert family_of(BackboneConfig(config={"model_type": "dinov3_vit"})).name == "dinov3_vit"
    generic = family_of(BackboneConfig(config={"model_type": "deit"}))
    assert generic.name == "generic" and "AutoConfig.for_model" in generic.description


def test_an_unlisted_model_type_still_trains_through_the_generic_family() -> None:
    backbone = BackboneConfig(config={"model_type": "deit", **TINY["vit"]})
    family, params = family_and_params(backbone)
    assert family.name == "generic" and family.architecture(params) == "deit"
    assert family.backbone_section(params) == {"config": backbone.config}
    torch.manual_seed(0)
    model = build_backbone(backbone)
    assert type(model).__name__ == "DeiTModel" and model.config.hidden_size == 32


def test_pretrained_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = AutoModel.from_config(AutoConfig.for_model("vit", **TINY["vit"]))
    saved.save_pretrained(tmp_path / "tiny-vit")
    backbone = BackboneConfig(id=str(tmp_path / "tiny-vit"))
    family, params = family_and_params(backbone)
    assert family.name == "pretrained" and family.backbone_section(params) == {"id": backbone.id}
    assert family.variant_name(params) == "tiny-vit" and family.architecture(params) == "vit"
    assert family.describe(params) == ["Pretrained: tiny-vit", "Hidden: 32", "Layers: 2", "Heads: 2"]
    loaded = build_backbone(backbone).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items() if k in loaded)
    skeleton = backbone_skeleton(backbone)  # the architecture alone: no weights read
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in loaded.items()}
    assert next(skeleton.parameters()).device.type == "meta"


# --- the trainer builds through the family ----------------------------------------------


def _direct_build(config: dict) -> torch.nn.Module:
    """How the trainer built a backbone before families: the config dict straight to
    AutoConfig.for_model and AutoModel.from_config."""
    kwargs = dict(config)
    return drop_pooler(AutoModel.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)))


@pytest.mark.parametrize(
    "backbone",
    [load_config(p).model.backbone.config for p in BUILT_PRESETS] + [{"model_type": n, **TINY[n]} for n in ("dinov2", "dinov3_vit")],
    ids=[p.name for p in BUILT_PRESETS] + ["dinov2", "dinov3_vit"],
)
def test_same_seed_same_initial_weights_as_the_direct_build(backbone: dict) -> None:
    torch.manual_seed(7)
    before = _direct_build(backbone)
    torch.manual_seed(7)
    now = build_backbone(BackboneConfig(config=backbone))
    assert type(now) is type(before)
    old_state, new_state = before.state_dict(), now.state_dict()
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    assert backbone_config(BackboneConfig(config=backbone)).to_dict() == before.config.to_dict()


def test_run_names_need_neither_torch_nor_transformers() -> None:
    # Run names are computed before anything heavy is imported (config errors answer at once).
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from ray_app.config import load_config, run_name; "
         f"run_name(load_config({str(SMOKE)!r})); "
         "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


# --- families from other packages -------------------------------------------------------

THIRD_PARTY = textwrap.dedent(
    '''
    from pydantic import Field

    from trainers.families import ConfigFamily, FamilyParams


    class DeiTParams(FamilyParams):
        image_size: int = Field(default=224, gt=0, description="Image side in pixels.")
        patch_size: int = Field(default=16, gt=0, description="Patch side in pixels.")
        num_channels: int = Field(default=3, gt=0, description="Input channels.")
        hidden_size: int = Field(default=768, gt=0, description="Hidden width.")
        num_hidden_layers: int = Field(default=12, gt=0, description="Blocks.")
        num_attention_heads: int = Field(default=12, gt=0, description="Heads per block.")
        intermediate_size: int = Field(default=3072, gt=0, description="MLP width.")

        def cross_field_problems(self):
            return [] if self.hidden_size % self.num_attention_heads == 0 else ["heads must divide hidden_size"]


    class DeiTFamily(ConfigFamily):
        name = "deit"
        model_type = "deit"
        title = "DeiT"
        modality = "image"
        description = "A data-efficient image transformer."
        params_model = DeiTParams
        variant_pattern = "deit-h{hidden_size}-l{num_hidden_layers}"


    class SwinFamily(ConfigFamily):
        name = "swin"
        model_type = "swin"
        title = "Swin"
        modality = "image"
        description = "Registered as an instance."
        params_model = FamilyParams
        variant_pattern = "swin"


    SWIN = SwinFamily()
    NOT_A_FAMILY = 42


    class AnotherVit(DeiTFamily):
        name = "vit"
    '''
)
ENTRY_POINTS = textwrap.dedent(
    """
    [ray_app.families]
    deit = raf_fake_families:DeiTFamily
    swin = raf_fake_families:SWIN
    missing_attr = raf_fake_families:DoesNotExist
    broken_import = raf_no_such_module:Family
    number = raf_fake_families:NOT_A_FAMILY
    vit = raf_fake_families:AnotherVit
    misnamed = raf_fake_families:DeiTFamily
    """
)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real installed distribution on sys.path: a module and a .dist-info whose
    entry_points.txt registers families (good and broken) in the ray_app.families group."""
    (tmp_path / "raf_fake_families.py").write_text(THIRD_PARTY)
    dist_info = tmp_path / "raf_fake_families-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: raf-fake-families\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    reload_families()
    yield tmp_path
    sys.modules.pop("raf_fake_families", None)
    reload_families()


def test_entry_point_families_join_the_registry_and_broken_ones_are_skipped(
    installed_plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trainers.families"):
        registry = family_registry()
    assert registry["deit"].title == "DeiT" and isinstance(registry["deit"], ConfigFamily)
    assert registry["swin"].description == "Registered as an instance."
    assert type(registry["vit"]).__module__ == "trainers.families.builtin"  # a built-in is never replaced
    assert {"dinov2", "dinov3_vit", "bert", "pretrained", "generic"} <= set(registry)
    assert not {"missing_attr", "broken_import", "number", "misnamed"} & set(registry)
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for skipped in ("missing_attr", "broken_import", "number", "vit", "misnamed"):
        assert f"entry point '{skipped}'" in warnings, skipped
    assert "ModuleNotFoundError" in warnings and "not a ModelFamily" in warnings
    assert "already taken" in warnings and "registered as 'misnamed' but its name is 'deit'" in warnings


def test_an_entry_point_family_builds_trains_and_names_its_configs(installed_plugin: Path) -> None:
    raw = yaml_smoke()
    raw["model"]["backbone"]["config"] = {"model_type": "deit", **TINY["vit"]}
    raw["name_pattern"] = "{family}_{backbone}"
    cfg = validate_config(raw)
    family, params = family_and_params(cfg.model.backbone)
    assert family.name == "deit" and type(params).__name__ == "DeiTParams"
    assert run_name(cfg) == "deit_deit-h32-l2"
    model = build_backbone(cfg.model.backbone)
    assert type(model).__name__ == "DeiTModel" and model.config.num_hidden_layers == 2
    raw["model"]["backbone"]["config"]["hidden_size"] = 33  # the plugin's own rule applies
    with pytest.raises(ConfigError, match="heads must divide hidden_size"):
        validate_config(raw)


def test_a_built_in_lookup_reads_no_entry_point(installed_plugin: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainers.families"):
        assert family_of(load_config(SMOKE).model.backbone).name == "vit"
    assert not caplog.records  # the broken plugin was never loaded for a built-in type


def yaml_smoke() -> dict:
    import yaml

    return yaml.safe_load(SMOKE.read_text())



# --- trained variants -------------------------------------------------------------------


def test_runs_are_found_as_variants_of_their_family(tmp_path: Path) -> None:
    from ray_app.runs import family_variants  # noqa: PLC0415

    root = tmp_path / "runs"
    digits_vit = ("model.backbone.config={model_type: vit, image_size: 8, patch_size: 2, num_channels: 1, hidden_size: 64, "
                  "num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 128}")
    for preset, overrides in ((SMOKE, []), (REPO / "configs" / "digits.yaml", ["seed=1", digits_vit]),
                              (REPO / "configs" / "text_smoke.yaml", [])):
        cfg = load_config(preset, [f"storage.root={root}", *overrides])
        Run.for_config(cfg).prepare(cfg)
    (root / "not_a_run_any_more").mkdir()
    (root / "not_a_run_any_more" / "metadata.json").write_text("{}")  # no config.yaml: left out
    vit = family_variants(root, "vit")
    assert [(v.run, v.variant) for v in vit] == [
        ("sklearn_digits_vit_baseline_lr0.004_s1", "vit-h64-l4"), ("smoke_vit_baseline_s0", "vit-h32-l2"),
    ]
    assert vit[1].params["hidden_size"] == 32 and vit[1].params["image_size"] == 8 and vit[1].train_status is None
    assert [v.run for v in family_variants(root, "bert")] == ["text_smoke_bert_baseline_s0"]
    assert len(family_variants(root)) == 3 and family_variants(root, "dinov2") == []
