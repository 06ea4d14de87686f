"""Templates: generated names and descriptions, and the store of template files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from ray_app.config import AppConfig, load_config, run_name
from ray_app.errors import ConfigError, UserError
from ray_app.runs import Run
from ray_app.templates import (
    InvalidName,
    Template,
    TemplateExists,
    TemplateNotFound,
    TemplateStore,
    record_template,
    suggest_template,
    templates_dir,
)
from tests.helpers.configs import REPO, SMOKE

DIGITS = REPO / "configs" / "digits.yaml"
DIGITS_LORA = REPO / "configs" / "digits_lora.yaml"
TEXT_SMOKE = REPO / "configs" / "text_smoke.yaml"
DIGITS_FACTS = "LR: 0.004 · Batch: 32 · Epochs: 30 · Head: linear"


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# --- suggestions ------------------------------------------------------------------------


def test_suggestion_for_the_digits_convnext() -> None:
    suggestion = suggest_template(load_config(DIGITS))
    assert suggestion.name == "convnext-w64-b4_sklearn-digits_baseline"
    assert suggestion.description == f"Stages: 2 · Widths: [32, 64] · Blocks: [2, 2] · Stem stride: 1 · {DIGITS_FACTS}"
    assert suggestion.family == "convnext"


def test_suggestion_for_a_dinov3_backbone() -> None:
    cfg = load_config(DIGITS, [
        "model.backbone.config={model_type: dinov3_vit, image_size: 8, patch_size: 2, num_channels: 1, "
        "hidden_size: 96, num_hidden_layers: 3, num_attention_heads: 6, intermediate_size: 192}",
    ])
    suggestion = suggest_template(cfg)
    # `_` separates the parts of the name, so dinov3_vit becomes dinov3-vit inside one.
    assert suggestion.name == "dinov3-vit-h96-l3_sklearn-digits_baseline"
    assert suggestion.description == f"Hidden: 96 · Layers: 3 · Heads: 6 · {DIGITS_FACTS}"
    assert suggestion.family == "dinov3_vit"


def test_suggestion_for_the_text_bert() -> None:
    suggestion = suggest_template(load_config(TEXT_SMOKE))
    assert suggestion.name == "bert-h32-l2_reviews_baseline"
    assert suggestion.description == "Hidden: 32 · Layers: 2 · Heads: 2 · LR: 0.003 · Batch: 16 · Epochs: 8 · Head: linear"


def test_suggestion_for_lora_and_the_other_peft_methods() -> None:
    lora = suggest_template(load_config(DIGITS_LORA, ["training.peft.unfreeze_last_blocks=0"]))
    assert lora.name == "vit-h64-l4_sklearn-digits_lora"
    assert lora.description == "Hidden: 64 · Layers: 4 · Heads: 4 · LR: 0.005 · Batch: 32 · Epochs: 30 · Head: linear · LoRA r=8 α=16"
    loha = suggest_template(load_config(DIGITS_LORA, ["training.peft.unfreeze_last_blocks=0", "training.peft.method=loha",
                                                      "training.peft.r=4", "training.peft.alpha=6.5"]))
    assert loha.name == "vit-h64-l4_sklearn-digits_loha"
    assert loha.description.endswith("Head: linear · LoHa r=4 α=6.5")


def test_suggestion_for_explora() -> None:
    explora = suggest_template(load_config(DIGITS_LORA))
    assert explora.name == "vit-h64-l4_sklearn-digits_explora"
    assert explora.description == (
        "Hidden: 64 · Layers: 4 · Heads: 4 · LR: 0.005 · Batch: 32 · Epochs: 30 · Head: linear · LoRA r=8 α=16 · unfrozen: 1"
    )
    lokr = suggest_template(load_config(DIGITS_LORA, ["training.peft.method=lokr", "training.peft.unfreeze_last_blocks=2"]))
    assert lokr.name == "vit-h64-l4_sklearn-digits_explora-lokr"
    assert lokr.description.endswith("LoKr r=8 α=16 · unfrozen: 2")


def test_suggestion_for_a_linear_probe_and_a_pretrained_directory(tmp_path: Path) -> None:
    probe = suggest_template(load_config(DIGITS, ["model.freeze_backbone=true", "model.head=mlp"]))
    assert probe.name == "convnext-w64-b4_sklearn-digits_probe"
    assert probe.description.endswith("Head: mlp · Backbone: frozen")
    directory = tmp_path / "all-MiniLM_L6"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}')
    cfg = load_config(TEXT_SMOKE, ["model.backbone.config=null", f"model.backbone.id={directory}", "model.preprocessing.tokenizer=null"])
    suggestion = suggest_template(cfg)
    assert suggestion.name == "all-MiniLM-L6_reviews_baseline" and suggestion.family == "pretrained"
    assert suggestion.description.startswith("Pretrained: all-MiniLM_L6 · Hidden: 384 · Layers: 6 · Heads: 12 · LR: 0.003")


def test_every_suggested_name_is_a_valid_template_name(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    for preset in (DIGITS, DIGITS_LORA, TEXT_SMOKE, SMOKE):
        suggestion = suggest_template(load_config(preset))
        assert store.path(suggestion.name).parent == tmp_path


# --- the store --------------------------------------------------------------------------


def digits_template(name: str = "vit-h64-l4_sklearn-digits_baseline", **fields) -> Template:
    suggestion = suggest_template(load_config(DIGITS))
    fields.setdefault("description", suggestion.description)
    fields.setdefault("config", raw(DIGITS))
    return Template(name=name, **fields)


def test_save_list_get_delete(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    assert store.list() == []
    saved = store.save(digits_template())
    assert saved.family == "convnext"  # filled in from the config
    store.save(digits_template("text", config=raw(TEXT_SMOKE), description="BERT on reviews"))
    assert [t.name for t in store.list()] == ["text", "vit-h64-l4_sklearn-digits_baseline"]
    assert store.get("text").family == "bert"
    assert store.get("vit-h64-l4_sklearn-digits_baseline") == saved
    store.delete("text")
    assert [t.name for t in store.list()] == ["vit-h64-l4_sklearn-digits_baseline"]
    with pytest.raises(TemplateNotFound, match="no template named 'text'"):
        store.get("text")
    with pytest.raises(TemplateNotFound):
        store.delete("text")
    assert sorted(p.name for p in (tmp_path / "templates").iterdir()) == ["vit-h64-l4_sklearn-digits_baseline.yaml"]


def test_a_name_is_saved_once_unless_overwritten(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    store.save(digits_template("digits", description="first"))
    with pytest.raises(TemplateExists, match="'digits' already exists"):
        store.save(digits_template("digits", description="second"))
    assert store.get("digits").description == "first"
    store.save(digits_template("digits", description="second"), overwrite=True)
    assert store.get("digits").description == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["digits.yaml"]  # no temporary file left behind


def test_an_invalid_config_lists_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    config = raw(DIGITS)
    config["training"].update(epochs=0, lr=-1.0, learning_rate=0.1)
    config["model"]["backbone"]["config"]["hidden_sizes"] = [32]
    store = TemplateStore(tmp_path)
    with pytest.raises(ConfigError) as info:
        store.save(Template(name="bad", config=config))
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "training.epochs" in text and "training.lr" in text
    assert "training.learning_rate: unknown key" in text
    assert "hidden_sizes has 1 entries for num_stages 2" in text
    assert not list(tmp_path.iterdir())


def test_a_family_that_is_not_the_configs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="says 'bert' but its backbone \\(convnext-w64-b4\\) is of the 'convnext' family"):
        TemplateStore(tmp_path).save(digits_template("x", family="bert"))


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", ".hidden", "..", "", "a b", "x" * 129, "a\\b"])
def test_path_like_names_are_refused(tmp_path: Path, name: str) -> None:
    store = TemplateStore(tmp_path / "templates")
    with pytest.raises(InvalidName, match="is not allowed"):
        store.save(digits_template(name))
    for action in (store.get, store.delete, store.resolve):
        with pytest.raises(InvalidName):
            action(name)
    assert isinstance(InvalidName("x"), UserError)
    assert not any(tmp_path.rglob("*.yaml"))


def test_a_saved_file_is_readable_yaml_and_round_trips(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    saved = store.save(digits_template())
    text = (tmp_path / "vit-h64-l4_sklearn-digits_baseline.yaml").read_text()
    assert text.splitlines()[0] == "# ray-app submit --template vit-h64-l4_sklearn-digits_baseline"
    assert "description: 'Stages: 2 · Widths: [32, 64] · Blocks: [2, 2] · Stem stride: 1 · LR: 0.004" in text  # not escaped
    loaded = yaml.safe_load(text)
    assert list(loaded) == ["name", "description", "family", "created", "config"]
    assert loaded["config"] == raw(DIGITS)  # the config as written, not every default
    assert store.get(saved.name) == saved
    assert text.count("\n") < 60  # short enough to review


def test_resolve_applies_overrides_and_validates(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    store.save(digits_template("digits"))
    cfg = store.resolve("digits", ["training.epochs=2", f"storage.root={tmp_path / 'runs'}"])
    assert isinstance(cfg, AppConfig) and cfg.training.epochs == 2
    assert run_name(cfg) == run_name(load_config(DIGITS))  # epochs is not in the name pattern
    assert store.get("digits").config["training"]["epochs"] == 30  # the template itself is unchanged
    with pytest.raises(ConfigError) as info:
        store.resolve("digits", ["training.epochs=0", "training.batch_size=-2"])
    assert len(info.value.problems) == 2 and "template 'digits'" in str(info.value)
    with pytest.raises(TemplateNotFound, match="templates: digits"):
        store.resolve("nope")


def test_a_broken_file_is_skipped_by_list_and_reported_by_get(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TemplateStore(tmp_path)
    store.save(digits_template("good"))
    (tmp_path / "broken.yaml").write_text("name: broken\nconfig: [not, a, mapping\n")
    (tmp_path / "renamed.yaml").write_text((tmp_path / "good.yaml").read_text())
    with caplog.at_level(logging.WARNING, logger="ray_app.templates"):
        assert [t.name for t in store.list()] == ["good"]
    assert "broken.yaml" in caplog.text and "renamed.yaml" in caplog.text
    with pytest.raises(ConfigError, match="not valid YAML"):
        store.get("broken")
    with pytest.raises(ConfigError, match="the file says 'good' but is named 'renamed.yaml'"):
        store.get("renamed")


def test_templates_sit_next_to_the_runs_root(tmp_path: Path) -> None:
    assert templates_dir(tmp_path / "runs") == tmp_path / "templates"


def test_a_run_records_the_template_that_launched_it(tmp_path: Path) -> None:
    store = TemplateStore(templates_dir(tmp_path / "runs"))
    template = store.save(digits_template("digits"))
    cfg = store.resolve("digits", [f"storage.root={tmp_path / 'runs'}"])
    run = Run.for_config(cfg)
    record_template(run, template)
    run.prepare(cfg)  # what the first stage does: the record stays
    meta = run.metadata()
    assert meta["template"]["name"] == "digits" and meta["template"]["description"] == template.description
    assert meta["name"] == run.name and meta["config_fingerprint"] == cfg.fingerprint()


def test_templates_and_families_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ray_app.cli import main

    root = ["--runs-root", str(tmp_path / "runs")]
    assert main(["templates", "save", str(SMOKE), "-o", "training.epochs=3", "--description", "mine", *root]) == 0
    saved = capsys.readouterr().out
    assert "saved template vit-h32-l2_sklearn-digits_baseline" in saved and "ray-app submit --template" in saved
    assert (tmp_path / "templates" / "vit-h32-l2_sklearn-digits_baseline.yaml").is_file()
    assert main(["templates", "save", str(SMOKE), *root]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["templates", "list", *root]) == 0
    assert capsys.readouterr().out.split()[:3] == ["vit-h32-l2_sklearn-digits_baseline", "vit", "mine"]
    assert main(["templates", "show", "vit-h32-l2_sklearn-digits_baseline", *root]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["config"]["training"]["epochs"] == 3
    assert main(["templates", "save", str(SMOKE), "-o", "training.lr=-1", "--name", "bad", *root]) == 2
    assert "training.lr" in capsys.readouterr().err and not (tmp_path / "templates" / "bad.yaml").exists()
    assert main(["templates", "show", "../x", *root]) == 2 and "not allowed" in capsys.readouterr().err

    assert main(["families", "show", "bert"]) == 0
    shown_family = capsys.readouterr().out
    assert "hidden_size" in shown_family and "default 768" in shown_family
    assert main(["families", "show", "nope"]) == 2 and "families: vit" in capsys.readouterr().err
