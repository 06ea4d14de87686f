"""Text end to end on a local Ray: a tokenizer built here from a vocabulary file, a small
CSV of reviews, the configs/text_smoke.yaml model trained through the pipeline, and the
exported bundle answering texts on its own. Plus csv / jsonl / parquet text sources
giving the same splits."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calibration.policy import Policy
from ray_app.config import load_config
from ray_app.insights import example, meaning_map, storyboard
from ray_app.runs import Run
from ray_app.stages import CALIBRATE, EVALUATE, EXPORT, INSIGHTS
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from ray_app.stages.train import run_training
from serve.bundle import load_bundle
from serve.predictor import BundlePredictor, PredictInput, PredictRequest
from tests.helpers.configs import REPO

pytestmark = pytest.mark.usefixtures("ray_local")

TEXT_SMOKE = REPO / "configs" / "text_smoke.yaml"
WORDS = {
    "pos": ["good", "great", "fine", "lovely"],
    "neg": ["bad", "awful", "dull", "poor"],
    "meh": ["okay", "plain", "average", "so"],
}
NOUNS = ["film", "plot", "cast", "music", "ending"]
ADVERBS = ["", "very", "quite", "truly"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "was", "and", *NOUNS, *ADVERBS[1:],
         *(w for words in WORDS.values() for w in words)]


def tiny_tokenizer(directory: Path) -> Path:
    """A WordPiece tokenizer from a vocabulary file, saved the way AutoTokenizer loads it."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory / "tokenizer")
    return directory / "tokenizer"


def review_rows(per_class: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct short reviews; the class is the adjectives' class. A few labels are
    flipped (seeded) so that val_calib has errors for temperature scaling to fit."""
    rng = random.Random(seed)
    rows = []
    for label, adjectives in WORDS.items():
        texts: set[str] = set()
        while len(texts) < per_class:
            adjective = " and ".join(rng.sample(adjectives, rng.choice([1, 2])))
            texts.add(" ".join(w for w in ["the", rng.choice(NOUNS), "was", rng.choice(ADVERBS), adjective] if w))
        rows += [(t, label) for t in sorted(texts)]
    labels = list(WORDS)
    return [(t, labels[(labels.index(y) + 1) % 3] if i % 15 == 7 else y) for i, (t, y) in enumerate(rows)]


def text_config(runs: Path, data: Path, tokenizer: Path, *overrides: str):
    return load_config(TEXT_SMOKE, [
        f"storage.root={runs}", f"data.source.path={data}", f"model.preprocessing.tokenizer={tokenizer}",
        f"model.backbone.config.vocab_size={len(VOCAB)}", *overrides,
    ])


def test_text_run_trains_end_to_end_and_the_bundle_answers_texts(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    rows = review_rows()
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    cfg = text_config(
        tmp_path / "runs", data, tokenizer, "training.epochs=6", "calibration.temperature.min_samples=20",
        # No Tune sweep here (tests/integration/test_calibration_stage.py covers it).
        "calibration.guardrail.enabled=false", "calibration.policy=threshold",
    )
    ctx = StageContext(cfg, Run.for_config(cfg))
    run, reader = ctx.run, ensure_splits(ctx)
    summary = reader.summary()
    assert summary["label_names"] == ["meh", "neg", "pos"] and summary["num_rows_used"] == len(rows)

    info = run_training(ctx)
    history = [json.loads(x) for x in run.train.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(6))
    assert (run.train.metrics_csv).read_text().count("\n") == 1 + 6
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert info["best"]["val_select/accuracy"] >= 0.7  # chance is 1/3
    for split in ("val_calib", "val_test"):
        with np.load(run.train.predictions(split)) as saved:
            assert saved["logits"].shape == (summary["splits"][split]["count"], 3)
            assert saved["logits"].dtype == np.float32 and np.isfinite(saved["logits"]).all()
            assert sorted(saved["labels"].tolist()) == sorted(
                [summary["label_names"].index(k) for k, n in summary["splits"][split]["class_counts"].items()
                 for _ in range(n)]
            )
    spec = json.loads((run.train.model_dir / "classifier.json").read_text())["preprocessing"]
    assert spec == {"kind": "text", "tokenizer": str(tokenizer.resolve()), "max_length": 16}

    CALIBRATE.run(StageContext(cfg, run))
    EVALUATE.run(StageContext(cfg, run))
    INSIGHTS.run(StageContext(cfg, run))
    # text insights: the TF-IDF reference beats chance, examples come back as their text,
    # and the threshold policy's storyboard says it has no assist band
    reference = run.stage_info("insights")["reference"]
    assert reference["kind"].startswith("logistic regression on TF-IDF") and reference["val_test_accuracy"] > 0.6
    board = storyboard(run)
    assert not board["categories"]["assist"]["available"] and "no assist band" in board["categories"]["assist"]["reason"]
    texts = dict(rows)
    shown = [e for c in board["categories"].values() for e in c["examples"]]
    assert shown
    for entry in shown:
        answer = example(run, entry["id"])
        assert answer["kind"] == "text" and texts[answer["text"]] == answer["label"] == entry["label"]
    assert meaning_map(run)["rows"]["shown"] == summary["splits"]["val_test"]["count"]
    assert not (run.root / "insights" / "storyboard.png").exists()  # thumbnails are for images
    bundle_dir = Path(EXPORT.run(StageContext(cfg, run))["bundle"])
    shutil.rmtree(tmp_path / "tok")  # the bundle carries its tokenizer
    predictor = BundlePredictor(load_bundle(bundle_dir), max_image_pixels=1)
    texts = ["the film was very great and lovely", "the plot was awful", "the cast was plain"]
    request = PredictRequest(inputs=[PredictInput(text=t) for t in texts])
    inputs = predictor.prepare(request, max_inputs=8)
    assert inputs == texts  # tokenized with their batch, by the bundle's own tokenizer
    [(rows, chunk)] = predictor.tokenize(inputs)
    assert sorted(rows.tolist()) == [0, 1, 2] and chunk["input_ids"][:, 0].tolist() == [2, 2, 2]  # [CLS] first
    assert chunk["input_ids"].shape[1] == int(chunk["attention_mask"].sum(dim=1).max()) <= 16  # padded to the longest
    answers = predictor.answer(predictor.logits(inputs), Policy.model_validate_json(
        (bundle_dir / "policy.json").read_text()), top_k=3)
    assert [a.label for a in answers] == ["pos", "neg", "meh"]
    assert all(abs(sum(p.probability for p in a.top_k) - 1.0) < 1e-5 for a in answers)


def test_csv_jsonl_and_parquet_text_sources_make_the_same_splits(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    rows = review_rows(per_class=12)
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    jsonl_path = tmp_path / "r.jsonl"
    jsonl_path.write_text("".join(json.dumps({"review": t, "y": y}) + "\n" for t, y in rows))
    parquet_path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"body": [t for t, _ in rows], "class": [y for _, y in rows]}), parquet_path)
    sources = {
        "csv": [f"data.source.path={csv_path}"],
        "jsonl": ["data.source.kind=jsonl", f"data.source.path={jsonl_path}",
                  "data.source.text_column=review", "data.source.label_column=y"],
        "parquet": ["data.source.kind=parquet", f"data.source.path={parquet_path}",
                    "data.source.text_column=body", "data.source.label_column=class"],
    }
    summaries = {}
    for kind, overrides in sources.items():
        cfg = text_config(tmp_path / kind, csv_path, tokenizer, *overrides)
        assert cfg.data.source.modality == "text"
        summaries[kind] = ensure_splits(StageContext.for_config(cfg)).summary()
    for kind, summary in summaries.items():
        assert summary["label_names"] == ["meh", "neg", "pos"], kind
        assert summary["num_rows_used"] == len(rows), kind
        # the same texts in the same splits: hashes of the text, whatever the file format
        assert summary["splits"] == summaries["csv"]["splits"], kind
