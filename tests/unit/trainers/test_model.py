"""The classifier (backbone + head), saving and loading it, checkpoints, and turning
split rows into model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_cosine_schedule_with_warmup

from tests.helpers.models import TINY_BERT, TINY_VIT, model_cfg, png
from trainers.checkpoint import load_checkpoint, read_state, save_checkpoint, selected_model
from trainers.config import ModelConfig
from trainers.model import build_classifier, load_classifier, save_classifier
from trainers.optim import param_groups
from trainers.preprocess import ImageSpec, decode_image, model_inputs, preprocess_image_batch, resolve_image_spec


def test_classifier_shapes_and_no_pooler() -> None:
    torch.manual_seed(0)
    model = build_classifier(model_cfg(head="mlp", head_hidden_dim=16), num_labels=5)
    assert model.backbone.pooler is None  # would otherwise be a grad-less layer under DDP
    logits = model(pixel_values=torch.randn(3, 1, 8, 8))
    assert logits.shape == (3, 5)


def test_same_seed_same_initial_weights() -> None:
    torch.manual_seed(4)
    a = build_classifier(model_cfg(), 3).state_dict()
    torch.manual_seed(4)
    b = build_classifier(model_cfg(), 3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mean_pooling_ignores_padding() -> None:
    torch.manual_seed(0)
    model = build_classifier(model_cfg(backbone=TINY_BERT, pooling="mean"), 2).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    short = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        padded = model.pooled_features(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0]]))
        exact = model.pooled_features(input_ids=short, attention_mask=torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(padded, exact, atol=1e-5, rtol=1e-5)


def test_frozen_backbone_has_no_trainable_parameters() -> None:
    model = build_classifier(model_cfg(freeze_backbone=True), 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 1]  # weight decayed, bias not


def test_save_and_load_classifier_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = model_cfg(head="mlp", head_hidden_dim=8)
    model = build_classifier(cfg, 3).eval()
    save_classifier(model, cfg, ["a", "b", "c"], tmp_path, extra={"selected_epoch": 2})
    loaded, spec = load_classifier(tmp_path)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x), model(pixel_values=x))
    assert spec["label_names"] == ["a", "b", "c"] and spec["selected_epoch"] == 2
    assert not list(tmp_path.glob("**/*.pt")) and not list(tmp_path.glob("**/*.bin"))  # no pickle


def test_checkpoint_round_trip_with_ema(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier(model_cfg(), 3)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    for _ in range(3):
        model(pixel_values=torch.randn(2, 1, 8, 8)).sum().backward()
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
    save_checkpoint(tmp_path, model, ema, optimizer, scheduler, {"epoch": 3, "history": [{"epoch": 0}]})

    torch.manual_seed(1)
    fresh = build_classifier(model_cfg(), 3)
    fresh_ema = AveragedModel(fresh, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = get_cosine_schedule_with_warmup(fresh_opt, 2, 10)
    state = load_checkpoint(tmp_path, fresh, fresh_ema, fresh_opt, fresh_sched)
    assert state["epoch"] == 3 and read_state(tmp_path)["history"] == [{"epoch": 0}]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert int(fresh_ema.n_averaged) == 3  # the EMA keeps its step count across a resume
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]

    chosen = selected_model(tmp_path, build_classifier(model_cfg(), 3), use_ema=True)
    ema_weights = ema.module.state_dict()
    assert all(torch.equal(ema_weights[k], v) for k, v in chosen.state_dict().items())
    assert not torch.equal(chosen.head.weight, model.head.weight)


def test_decode_image_resizes_converts_and_normalises() -> None:
    spec = ImageSpec(image_size=4, num_channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    grey = np.full((8, 8), 255, dtype=np.uint8)
    out = decode_image(png(grey), spec)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)  # (1.0 - 0.5) / 0.25
    batch = preprocess_image_batch({"image": np.array([png(grey)] * 2, dtype=object), "label_id": np.array([1, 0])}, spec)
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["labels"].tolist() == [1, 0]
    assert batch["pixel_values"].dtype == np.uint8 and (batch["pixel_values"] == 255).all()  # 4x smaller than float32
    inputs = model_inputs({k: torch.as_tensor(v) for k, v in batch.items()}, spec)
    assert inputs.keys() == {"pixel_values"} and inputs["pixel_values"].dtype == torch.float32
    torch.testing.assert_close(inputs["pixel_values"], torch.full((2, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="uint8 pixel_values need the ImageSpec"):
        model_inputs({"pixel_values": torch.zeros(1, 3, 4, 4, dtype=torch.uint8)})


def test_uint8_pixels_normalised_on_the_device_give_the_served_logits() -> None:
    """Training and the logits pass feed uint8 pixels normalised by the tensor's own
    device; serving normalises on the CPU first: the same logits either way."""
    spec = ImageSpec(image_size=8, num_channels=1, mean=(0.3,), std=(0.2,))
    rng = np.random.default_rng(0)
    images = [png(rng.integers(0, 256, (11, 9), dtype=np.uint8)) for _ in range(6)]  # resized to 8x8
    batch = preprocess_image_batch({"image": np.array(images, dtype=object), "label_id": np.zeros(6, dtype=np.int64)},
                                   spec)
    served = torch.as_tensor(np.stack([decode_image(image, spec) for image in images]))
    torch.manual_seed(0)
    model = build_classifier(model_cfg(views=["identity", "center_crop"]), 3).eval()
    with torch.no_grad():
        on_device = model(**model_inputs({"pixel_values": torch.as_tensor(batch["pixel_values"])}, spec))
        float_path = model(pixel_values=served)
    torch.testing.assert_close(on_device, float_path, rtol=1e-6, atol=1e-6)


def test_resolve_image_spec_from_backbone_config_and_overrides() -> None:
    assert resolve_image_spec(model_cfg()) == ImageSpec(8, 1, (0.5,), (0.5,))
    cfg = model_cfg(preprocessing={"image_size": 16, "image_mean": [0.1], "image_std": [0.2]})
    assert resolve_image_spec(cfg) == ImageSpec(16, 1, (0.1,), (0.2,))
    with pytest.raises(ValueError, match="1 channel"):
        resolve_image_spec(model_cfg(preprocessing={"image_mean": [0.1, 0.1], "image_std": [0.2, 0.2]}))


def test_backbone_from_local_directory_with_image_processor(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel, ViTImageProcessor

    kwargs = {k: v for k, v in TINY_VIT.items() if k != "model_type"}
    torch.manual_seed(0)
    saved = AutoModel.from_config(AutoConfig.for_model("vit", **kwargs))
    saved.save_pretrained(tmp_path / "bb")
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.3], image_std=[0.2]).save_pretrained(tmp_path / "bb")
    cfg = ModelConfig.model_validate({"backbone": {"id": str(tmp_path / "bb")}})
    assert resolve_image_spec(cfg) == ImageSpec(8, 1, (0.3,), (0.2,))  # the processor's own values
    model = build_classifier(cfg, 2)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in saved.state_dict().items() if k in loaded)


def test_text_preprocessor_uses_the_tokenizer(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    from tests.helpers.references import tokenize
    from trainers.preprocess import TextSpec

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "awful"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    out = tokenize(TextSpec(tokenizer=str(tmp_path / "tok"), max_length=8),
                   {"text": np.array(["The movie was great", "awful awful awful awful awful awful awful awful"], dtype=object),
                    "label_id": np.array([1, 0]), "id": np.array([7, 8])}, keep=("id",))
    assert out["input_ids"].tolist()[0] == [2, 5, 6, 7, 8, 3, 0, 0]  # [CLS] the movie was great [SEP] pad
    assert out["attention_mask"].tolist()[0] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert out["input_ids"].shape == (2, 8) and out["input_ids"][1, -1] == 3  # truncated, ends in [SEP]
    assert out["labels"].tolist() == [1, 0] and out["id"].tolist() == [7, 8]
    torch.manual_seed(0)
    bert = build_classifier(model_cfg(backbone={**TINY_BERT, "vocab_size": len(vocab)}, pooling="mean"), 2)
    logits = bert(input_ids=torch.as_tensor(out["input_ids"]), attention_mask=torch.as_tensor(out["attention_mask"]))
    assert logits.shape == (2, 2)
