"""Text inputs without Ray: the shipped text smoke data and tokenizer, the checks that
a tokenizer fits its backbone, and PEFT on the text preset's BERT-style backbone."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_app.config import check_paths_exist, load_config
from ray_app.errors import UserError
from ray_app.stages.context import StageContext
from tests.helpers.configs import REPO
from tests.helpers.references import tokenize
from trainers.adapters import PeftSetup, merge_adapters
from trainers.optim import param_groups
from trainers.preprocess import TextSpec, load_tokenizer, resolve_text_spec

TEXT_SMOKE = REPO / "configs" / "text_smoke.yaml"
TEXT_DATA = REPO / "configs" / "data" / "text_smoke"


def input_spec(cfg):
    """How the pipeline turns this config's rows into inputs (the tokenizer checked)."""
    return StageContext.for_config(cfg).input_spec


def test_shipped_text_smoke_files_are_what_the_generator_writes() -> None:
    loaded = importlib.util.spec_from_file_location("make_text_smoke", TEXT_DATA / "make_text_smoke.py")
    assert loaded is not None and loaded.loader is not None
    generator = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(generator)
    for name, content in generator.files().items():
        assert (TEXT_DATA / name).read_text() == content, f"{name}: run make_text_smoke.py again"
    lines = (TEXT_DATA / "reviews.csv").read_text().splitlines()
    labels = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert lines[0] == "text,label" and len(lines) - 1 == 600
    assert sorted(set(labels)) == ["negative", "neutral", "positive"]
    assert min(labels.count(c) for c in set(labels)) >= 180  # noise flips a few, classes stay balanced


def test_text_preset_resolves_from_the_repo_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_config(TEXT_SMOKE)
    monkeypatch.chdir(REPO)
    check_paths_exist(cfg)
    spec = input_spec(cfg)  # loads the tokenizer and checks it against the backbone
    assert spec == TextSpec(tokenizer=str(TEXT_DATA / "tokenizer"), max_length=16)
    tokenizer = load_tokenizer(spec)
    assert len(tokenizer) == cfg.model.backbone.config["vocab_size"]  # no embedding row wasted or missing
    assert tokenizer("the film was great")["input_ids"][0] == tokenizer.cls_token_id
    texts = [line.rsplit(",", 1)[0] for line in (TEXT_DATA / "reviews.csv").read_text().splitlines()[1:]]
    encoded = tokenizer(texts)["input_ids"]
    assert tokenizer.unk_token_id not in {i for ids in encoded for i in ids}  # every word is in the vocabulary
    assert max(len(ids) for ids in encoded) <= cfg.model.preprocessing.max_length  # nothing truncated

    monkeypatch.chdir(tmp_path)  # relative paths follow the current directory
    with pytest.raises(UserError, match=f"tokenizer 'configs/data/text_smoke/tokenizer' is not a directory .*{tmp_path}"):
        input_spec(cfg)


def test_a_tokenizer_that_does_not_fit_the_backbone_is_a_user_error(tmp_path: Path) -> None:
    tokenizer = str(TEXT_DATA / "tokenizer")
    base = [f"model.preprocessing.tokenizer={tokenizer}", f"data.source.path={TEXT_DATA / 'reviews.csv'}"]
    small_vocab = load_config(TEXT_SMOKE, [*base, "model.backbone.config.vocab_size=40"])
    with pytest.raises(UserError, match="has 53 tokens but the backbone's vocab_size is 40: .* at least 53"):
        input_spec(small_vocab)
    too_long = load_config(TEXT_SMOKE, [*base, "model.preprocessing.max_length=64"])
    with pytest.raises(UserError, match="max_length is 64 but the backbone has max_position_embeddings=32"):
        input_spec(too_long)
    (tmp_path / "empty").mkdir()
    no_files = load_config(TEXT_SMOKE, ["model.preprocessing.tokenizer=" + str(tmp_path / "empty")])
    with pytest.raises(UserError, match="cannot load a tokenizer from .*empty.*tokenizer_config.json"):
        input_spec(no_files)


def tokenized_reviews(count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    cfg = load_config(TEXT_SMOKE, [f"model.preprocessing.tokenizer={TEXT_DATA / 'tokenizer'}"])
    lines = (TEXT_DATA / "reviews.csv").read_text().splitlines()[1 : count + 1]
    texts, labels = zip(*(line.rsplit(",", 1) for line in lines), strict=True)
    names = sorted(set(labels))
    batch = tokenize(resolve_text_spec(cfg.model),
                     {"text": np.array(texts, dtype=object), "label_id": np.array([names.index(y) for y in labels])})
    inputs = {k: torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask")}
    assert (inputs["attention_mask"] == 0).any()  # padded: mean pooling must mask it out
    return inputs, torch.as_tensor(batch["labels"])


def test_peft_on_the_text_preset_trains_only_adapters_and_head() -> None:
    cfg = load_config(TEXT_SMOKE, ["training.mode=peft"])
    assert cfg.training.peft is not None
    model = PeftSetup(cfg.model, cfg.training.peft, num_labels=3, seed=cfg.seed).build()
    inputs, labels = tokenized_reviews(32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=0.01)
    model.train()
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(**inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    assert losses[-1] < losses[0]
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    adapters = {k for k in changed if ".lora_" in k}
    assert changed == adapters | {"head.weight", "head.bias"}
    assert len(adapters) == 2 * 2 * 6  # A and B on query/key/value/3 dense per block, 2 blocks
    with torch.no_grad():
        unmerged = model(**inputs)
        merged = merge_adapters(copy.deepcopy(model))(**inputs)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)

