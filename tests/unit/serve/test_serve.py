"""Serve settings, the Serve config file ray-app writes for `serve deploy`, and the
request handling of BundlePredictor without a server (text model included)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from calibration.policy import Policy
from serve.app import serve_deploy_config
from serve.bundle import export_bundle, load_bundle
from serve.config import ServeConfig
from serve.predictor import BundlePredictor, InputError, PredictInput, PredictRequest
from tests.helpers.configs import REPO
from tests.helpers.models import TINY_BERT, model_cfg
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


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "long", "very", "and"]


def text_bundle(tmp_path: Path, pooling: str = "mean", max_length: int = 8) -> Path:
    from transformers import BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    cfg = model_cfg(backbone={**TINY_BERT, "vocab_size": len(VOCAB)}, pooling=pooling)
    torch.manual_seed(0)
    save_classifier(build_classifier(cfg, 2).eval(), cfg, ["neg", "pos"], tmp_path / "model",
                    extra={"preprocessing": TextSpec(str(tmp_path / "tok"), max_length).to_dict()})
    policy = Policy(rule="threshold", threshold=0.5)
    return export_bundle(tmp_path / "model", policy, tmp_path / "bundle", {"run": "t"})


@pytest.fixture
def text_predictor(tmp_path: Path) -> BundlePredictor:
    return BundlePredictor(load_bundle(text_bundle(tmp_path)), 10**6)


def test_text_model_answers_texts_and_refuses_images(text_predictor: BundlePredictor) -> None:
    request = PredictRequest(inputs=[PredictInput(text="good film"), PredictInput(text="bad film bad")])
    prepared = text_predictor.prepare(request, 8)
    assert prepared == ["good film", "bad film bad"]  # tokenized with its batch, not per request
    # one forward pass, padded to the batch's longest text (5 tokens), not to max_length (8)
    [(rows, inputs)] = text_predictor.tokenize(prepared)
    assert rows.tolist() == [0, 1]
    assert inputs["input_ids"].tolist() == [[2, 5, 7, 3, 0], [2, 6, 7, 6, 3]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
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


TEXTS = ["good", "bad film", "very very long plot and bad film and good", "film", "good plot and film",
         "bad bad bad", "long film", "very good and very bad plot", "plot", "good and bad", "film film film film",
         "very long", "bad", "good film plot", "and", "very " * 11 + "very"]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_dynamic_padding_and_length_chunks_give_the_max_length_logits(tmp_path: Path, pooling: str) -> None:
    """Padding to each chunk's longest text, in length-sorted chunks, is an optimisation
    only: the logits equal those of every text padded to max_length, in input order."""
    bundle = load_bundle(text_bundle(tmp_path, pooling=pooling, max_length=12))
    predictor = BundlePredictor(bundle, 10**6, text_chunk_size=3)
    encoded = predictor.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    with torch.inference_mode():
        reference = bundle.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).numpy()
    chunks = predictor.tokenize(TEXTS)
    assert [len(rows) for rows, _ in chunks] == [3, 3, 3, 3, 3, 1]
    assert max(inputs["input_ids"].shape[1] for _, inputs in chunks) == 12  # the longest is truncated
    assert min(inputs["input_ids"].shape[1] for _, inputs in chunks) == 3  # [CLS] word [SEP]
    np.testing.assert_allclose(predictor.logits(TEXTS), reference, rtol=0, atol=1e-5)
    whole_batch = BundlePredictor(bundle, 10**6, text_chunk_size=None)
    np.testing.assert_allclose(whole_batch.logits(TEXTS), reference, rtol=0, atol=1e-5)
    # and each text alone (a batch of one, no padding at all) gives its own row
    np.testing.assert_allclose(np.concatenate([predictor.logits([t]) for t in TEXTS]), reference, rtol=0, atol=1e-5)


def test_chunks_hold_texts_of_similar_length_each_padded_to_its_longest(tmp_path: Path) -> None:
    """What makes dynamic padding pay: a batch is sorted by token count before it is cut,
    so a short text never shares a pass with a long one, and no pass is wider than its
    longest text."""
    predictor = BundlePredictor(load_bundle(text_bundle(tmp_path, max_length=12)), 10**6, text_chunk_size=4)
    counts = [len(ids) for ids in predictor.tokenizer(TEXTS, truncation=True, max_length=12)["input_ids"]]
    chunks = predictor.tokenize(TEXTS)
    assert sorted(np.concatenate([rows for rows, _ in chunks]).tolist()) == list(range(len(TEXTS)))
    widths = []
    for rows, inputs in chunks:
        members = [counts[i] for i in rows]
        assert inputs["input_ids"].shape == (len(rows), max(members))
        assert inputs["attention_mask"].sum(dim=1).tolist() == members
        widths.append((min(members), max(members)))
    # every text of a chunk is at most as long as every text of the next one
    assert all(longest <= next_shortest for (_, longest), (next_shortest, _) in zip(widths, widths[1:]))
    assert widths[0][1] < widths[-1][0]  # the short texts' pass is narrower than the long ones'
    padded = sum(inputs["input_ids"].numel() for _, inputs in chunks)
    assert padded < 0.7 * len(TEXTS) * 12  # far fewer token slots than max_length padding


def test_a_left_padding_tokenizer_keeps_max_length_padding(tmp_path: Path) -> None:
    """Left padding shifts a text's positions by its padding, which BERT's absolute
    position embeddings see: dynamic padding would change the logits, so it is not used."""
    bundle = load_bundle(text_bundle(tmp_path, max_length=12))
    predictor = BundlePredictor(bundle, 10**6, text_chunk_size=3)
    predictor.tokenizer.padding_side = "left"
    encoded = predictor.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    with torch.inference_mode():
        reference = bundle.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).numpy()
    assert {inputs["input_ids"].shape[1] for _, inputs in predictor.tokenize(TEXTS)} == {12}
    np.testing.assert_allclose(predictor.logits(TEXTS), reference, rtol=0, atol=1e-5)


def test_precision_option(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="precision fp16 needs a GPU"):
        ServeConfig(bundle="b", precision="fp16")
    assert ServeConfig(bundle="b", precision="fp16", num_gpus_per_replica=1).precision == "fp16"
    with pytest.raises(ValidationError, match="precision"):
        ServeConfig(bundle="b", precision="fp8")
    bundle = load_bundle(text_bundle(tmp_path))
    reference = BundlePredictor(bundle, 10**6).logits(TEXTS)
    half = BundlePredictor(load_bundle(text_bundle(tmp_path)), 10**6, dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    logits = half.logits(TEXTS)
    assert logits.dtype == np.float32  # answers are computed in float32 whatever the forward's precision
    np.testing.assert_allclose(logits, reference, atol=0.1)


def test_replicas_and_threads_follow_the_reserved_resources() -> None:
    assert ServeConfig(bundle="b").resolved_num_replicas({"CPU": 2.0}) == 2
    assert ServeConfig(bundle="b", num_cpus_per_replica=2).resolved_num_replicas({"CPU": 5.0}) == 2
    assert ServeConfig(bundle="b", num_cpus_per_replica=4).resolved_num_replicas({"CPU": 2.0}) == 1
    assert ServeConfig(bundle="b", num_replicas=3).resolved_num_replicas({"CPU": 64.0}) == 3
    assert ServeConfig(bundle="b", num_gpus_per_replica=0.5).resolved_num_replicas({"CPU": 64.0, "GPU": 2.0}) == 4
    assert ServeConfig(bundle="b", num_gpus_per_replica=1).resolved_num_replicas({"CPU": 64.0}) == 1
    assert ServeConfig(bundle="b").resolved_torch_threads() == 1
    assert ServeConfig(bundle="b", num_cpus_per_replica=2.5).resolved_torch_threads() == 2
    assert ServeConfig(bundle="b", num_cpus_per_replica=0.5).resolved_torch_threads() == 1
    assert ServeConfig(bundle="b", num_cpus_per_replica=4, torch_threads=2).resolved_torch_threads() == 2
    assert ServeConfig(bundle="b").resolved_text_chunk_size(on_gpu=False) == 8
    assert ServeConfig(bundle="b").resolved_text_chunk_size(on_gpu=True) is None
    assert ServeConfig(bundle="b", text_chunk_size=4).resolved_text_chunk_size(on_gpu=True) == 4


def test_an_image_that_does_not_decode_fails_alone(tmp_path: Path) -> None:
    """The header is checked with the request, the pixels decoded with the batch: a
    truncated file gets its own InputError, the other inputs of the batch their logits."""
    from tests.helpers.models import TINY_VIT, png
    from trainers.preprocess import ImageSpec

    cfg = model_cfg(backbone=TINY_VIT)
    save_classifier(build_classifier(cfg, 3).eval(), cfg, ["a", "b", "c"], tmp_path / "model",
                    extra={"preprocessing": ImageSpec(8, 1, (0.5,), (0.5,)).to_dict()})
    bundle = export_bundle(tmp_path / "model", Policy(rule="threshold", threshold=0.5), tmp_path / "bundle", {"run": "i"})
    predictor = BundlePredictor(load_bundle(bundle), 10**6)
    good = png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    cut = good[:50]  # the header and part of the pixel data
    request = PredictRequest(inputs=[PredictInput(image=base64.b64encode(c).decode()) for c in (good, cut, good)])
    prepared = predictor.prepare(request, 8)  # the header of the cut file is intact
    results = predictor.logits_or_errors(prepared)
    assert isinstance(results[1], InputError) and "inputs[1].image could not be decoded" in str(results[1])
    np.testing.assert_allclose(results[0], results[2], rtol=0, atol=1e-5)
    alone = predictor.logits(predictor.prepare(PredictRequest(inputs=request.inputs[:1]), 8))[0]
    np.testing.assert_allclose(results[0], alone, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=r"inputs\[1\]\.image could not be decoded"):
        predictor.logits(prepared)


def test_each_input_needs_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of image, pixels or text"):
        PredictInput()
    with pytest.raises(ValidationError, match="exactly one of image, pixels or text"):
        PredictInput(text="a", image="b")
