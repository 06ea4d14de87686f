from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.policy import Policy
from serve.bundle import BundleError, export_bundle, load_bundle, verify_bundle
from tests.helpers.models import TINY_BERT, model_cfg
from trainers.model import build_classifier, save_classifier
from trainers.preprocess import ImageSpec

POLICY = Policy(temperature=1.5, rule="guardrail", center=0.6, width=0.2)


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = model_cfg(head="mlp", head_hidden_dim=8)
    model = build_classifier(cfg, 3).eval()
    spec = ImageSpec(8, 1, (0.5,), (0.5,))
    save_classifier(model, cfg, ["a", "b", "c"], tmp_path / "model", extra={"preprocessing": spec.to_dict()})
    path = export_bundle(tmp_path / "model", POLICY, tmp_path / "bundle", {"run": "r1", "splits_fingerprint": "f" * 64})
    return path, model


def test_round_trip_gives_the_same_logits_and_policy(bundle) -> None:
    path, model = bundle
    loaded = load_bundle(path)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(pixel_values=x), model(pixel_values=x))
    assert loaded.policy == POLICY
    assert loaded.spec["label_names"] == ["a", "b", "c"]
    assert loaded.model_version.startswith("r1@") and len(loaded.model_version) == 15
    manifest = json.loads((path / "bundle.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "classifier.json", "policy.json", "backbone/config.json"}
    assert manifest["splits_fingerprint"] == "f" * 64
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.pkl")) and not list(path.rglob("*.bin"))
    assert not path.with_name("bundle.tmp").exists()


def test_a_tampered_byte_is_refused(bundle) -> None:
    path, _ = bundle
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"\['model.safetensors'\] do not match their sha256"):
        load_bundle(path)


def test_a_changed_policy_is_refused(bundle) -> None:
    path, _ = bundle
    (path / "policy.json").write_text(Policy(rule="none").model_dump_json())
    with pytest.raises(BundleError, match="policy.json"):
        verify_bundle(path)


def test_a_missing_file_is_refused(bundle) -> None:
    path, _ = bundle
    (path / "backbone" / "config.json").unlink()
    with pytest.raises(BundleError, match=r"missing \['backbone/config.json'\]"):
        load_bundle(path)


def test_unknown_format_version_and_not_a_bundle(bundle, tmp_path: Path) -> None:
    path, _ = bundle
    manifest = json.loads((path / "bundle.json").read_text())
    (path / "bundle.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        load_bundle(path)
    with pytest.raises(BundleError, match="has no bundle.json"):
        load_bundle(tmp_path)


def test_text_bundle_carries_its_tokenizer(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    from tests.helpers.references import tokenize
    from trainers.preprocess import TextSpec

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    cfg = model_cfg(backbone={**TINY_BERT, "vocab_size": len(vocab)})
    model = build_classifier(cfg, 2)
    # The tokenizer of a backbone given by id lives in the model directory, next to its weights.
    model.backbone.save_pretrained(tmp_path / "tok")
    spec = TextSpec(str(tmp_path / "tok"), 6)
    save_classifier(model, cfg, ["n", "y"], tmp_path / "model", extra={"preprocessing": spec.to_dict()})
    path = export_bundle(tmp_path / "model", Policy(), tmp_path / "bundle", {"run": "t"})
    (tmp_path / "tok").rename(tmp_path / "gone")  # the bundle must not need the original
    loaded = load_bundle(path)
    assert loaded.spec["preprocessing"]["tokenizer"] == str(path / "tokenizer")
    tokenizer_files = {name for name in loaded.manifest["files"] if name.startswith("tokenizer/")}
    assert "tokenizer/tokenizer_config.json" in tokenizer_files
    assert not any(name.endswith(".safetensors") for name in tokenizer_files)  # the model dir's weights stay out
    tokens = tokenize(TextSpec(loaded.spec["preprocessing"]["tokenizer"], 6),
                      {"text": np.array(["yes no"], dtype=object), "label_id": np.array([1])})
    assert tokens["input_ids"].tolist() == [[2, 5, 6, 3, 0, 0]]


def test_a_bundle_with_views_is_format_2_and_serves_them(bundle, tmp_path: Path) -> None:
    path, _ = bundle
    assert json.loads((path / "bundle.json").read_text())["format_version"] == 1  # readable by older versions
    torch.manual_seed(0)
    cfg = model_cfg(views=["identity", "hflip"])
    model = build_classifier(cfg, 3).eval()
    save_classifier(model, cfg, ["a", "b", "c"], tmp_path / "views_model",
                    extra={"preprocessing": ImageSpec(8, 1, (0.5,), (0.5,)).to_dict()})
    views_path = export_bundle(tmp_path / "views_model", POLICY, tmp_path / "views_bundle", {"run": "r2"})
    # a version-1 reader would drop the views and serve uncalibrated single-view logits
    assert json.loads((views_path / "bundle.json").read_text())["format_version"] == 2
    loaded = load_bundle(views_path)
    assert loaded.model.views == ("identity", "hflip")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(pixel_values=x), model(pixel_values=x))
