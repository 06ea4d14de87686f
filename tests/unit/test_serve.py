"""Serve settings, the Serve config file ray-app writes for `serve deploy`, and the
request handling of BundlePredictor without a server (text model included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from calibration.policy import Policy
from serve.app import serve_deploy_config
from serve.bundle import export_bundle, load_bundle
from serve.config import ServeConfig
from serve.predictor import BundlePredictor, InputError, PredictInput, PredictRequest
from tests.conftest import REPO
from tests.unit.test_model import TINY_BERT, model_cfg
from trainers.model import build_classifier, save_classifier
from trainers.preprocess import TextSpec


def test_serve_settings_rules() -> None:
    with pytest.raises(ValidationError, match="max_ongoing_requests \\(8\\) must be >= max_batch_size \\(32\\)"):
        ServeConfig(bundle="b", max_ongoing_requests=8)
    with pytest.raises(ValidationError, match="min_replicas must be <= autoscaling.max_replicas"):
        ServeConfig(bundle="b", autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValidationError, match="route_prefix must start with '/'"):
        ServeConfig(bundle="b", route_prefix="api")
    assert ServeConfig(bundle="b").host == "127.0.0.1"  # loopback unless asked


def test_deploy_config_puts_the_policy_in_user_config() -> None:
    policy = {"rule": "threshold", "threshold": 0.9, "temperature": 1.3}
    config = ServeConfig(bundle="/b", policy=policy, token="t0k", port=8123, autoscaling={"max_replicas": 3})
    written = serve_deploy_config([config])
    ServeDeploySchema.model_validate(written)
    app = written["applications"][0]
    assert written["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert app["import_path"] == "serve.app:build_app"
    # the in-place settings are user_config only: changing them must not change the args
    assert app["deployments"][0]["user_config"] == {"policy": policy, "top_k": 3, "max_batch_size": 32,
                                                     "batch_wait_timeout_s": 0.005}
    assert not {"policy", "top_k", "max_batch_size", "host", "port"} & set(app["args"])
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    assert app["args"]["token"] == "t0k"
    assert "token" not in serve_deploy_config([config], include_token=False)["applications"][0]["args"]
    changed = serve_deploy_config([config.model_copy(update={"policy": None})])
    assert changed["applications"][0]["args"] == app["args"]
    rebuilt = ServeConfig.model_validate(app["args"] | app["deployments"][0]["user_config"])
    assert rebuilt.policy == policy and rebuilt.bundle == "/b"


def test_the_serve_preset_is_a_valid_serve_config_for_the_builder() -> None:
    raw = yaml.safe_load((REPO / "configs" / "serve" / "digits.yaml").read_text())
    assert (REPO / "configs" / "serve" / "digits.yaml").read_text().startswith("# serve deploy configs/serve/digits.yaml")
    ServeDeploySchema.model_validate(raw)
    app = raw["applications"][0]
    assert app["import_path"] == "serve.app:build_app"
    ServeConfig.model_validate(app["args"] | app["deployments"][0]["user_config"])


@pytest.fixture
def text_predictor(tmp_path: Path) -> BundlePredictor:
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    cfg = model_cfg(backbone={**TINY_BERT, "vocab_size": len(vocab)}, pooling="mean")
    save_classifier(build_classifier(cfg, 2).eval(), cfg, ["neg", "pos"], tmp_path / "model",
                    extra={"preprocessing": TextSpec(str(tmp_path / "tok"), 8).to_dict()})
    policy = Policy(rule="threshold", threshold=0.5)
    return BundlePredictor(load_bundle(export_bundle(tmp_path / "model", policy, tmp_path / "bundle", {"run": "t"})), 10**6)


def test_text_model_answers_texts_and_refuses_images(text_predictor: BundlePredictor) -> None:
    request = PredictRequest(inputs=[PredictInput(text="good film"), PredictInput(text="bad film bad")])
    prepared = text_predictor.prepare(request, 8)
    assert [x["input_ids"].tolist() for x in prepared] == [[2, 5, 7, 3, 0, 0, 0, 0], [2, 6, 7, 6, 3, 0, 0, 0]]
    logits = text_predictor.logits(prepared)
    assert logits.shape == (2, 2)
    answers = text_predictor.answer(logits, text_predictor.bundle.policy, top_k=5)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for answer, row in zip(answers, probabilities, strict=True):
        assert answer.label_id == int(row.argmax()) and answer.confidence == pytest.approx(float(row.max()), abs=1e-6)
        assert answer.decision == ("accept" if row.max() >= 0.5 else "abstain")
        assert len(answer.top_k) == 2  # capped at the number of classes
    assert text_predictor.input_description() == {"kind": "text", "accepts": ["text"], "max_length": 8}
    with pytest.raises(InputError, match=r"inputs\[1\] is pixels, but this model classifies text"):
        text_predictor.prepare(PredictRequest(inputs=[PredictInput(text="good"), PredictInput(pixels=[[0.0]])]), 8)


def test_each_input_needs_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of image, pixels or text"):
        PredictInput()
    with pytest.raises(ValidationError, match="exactly one of image, pixels or text"):
        PredictInput(text="a", image="b")
