"""The compute budget on a local Ray (to plan splits from the source): token counts
against the tokenizer itself, the cache, and the `ray-app budget` command."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import ray_app.budget as budget_module
from ray_app.budget import budget_key, compute_budget
from ray_app.cli import main
from ray_app.config import load_config
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from tests.helpers.configs import REPO, SMOKE

pytestmark = pytest.mark.usefixtures("ray_local")

TEXT_SMOKE = REPO / "configs" / "text_smoke.yaml"
TOKENIZER = REPO / "configs" / "data" / "text_smoke" / "tokenizer"


def small_reviews(path: Path) -> Path:
    """30 reviews of three classes, some longer than max_length 16 (truncated), some
    with words the vocabulary lacks ([UNK]): the count must follow the tokenizer."""
    words = ["good", "bad", "plain"]
    lines = ["text,label"]
    for i in range(30):
        label = words[i % 3]
        text = f"the film was {label}" + (" and the plot was very long and the cast was " * (i % 4)) + (
            " zyzzyva" if i % 5 == 0 else "")
        lines.append(f"{text.strip()} {i},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def direct_count(texts: list[str], max_length: int) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    real = sum(len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts)
    return real, len(texts) * max_length - real


def test_token_count_equals_the_tokenizer_and_a_second_call_hits_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = small_reviews(tmp_path / "reviews.csv")
    cfg = load_config(TEXT_SMOKE, [f"storage.root={tmp_path / 'runs'}", f"data.source.path={data}",
                                   "budget.benchmark_steps=2", "budget.warmup_steps=1"])
    computed: list[str] = []
    real_estimate = budget_module.estimate_budget

    def counting_estimate(cfg, reader=None):
        computed.append("estimate")
        return real_estimate(cfg, reader)

    monkeypatch.setattr(budget_module, "estimate_budget", counting_estimate)
    first = compute_budget(cfg)  # no splits yet: planned from the source
    assert computed == ["estimate"] and not first["cached"]

    reader = ensure_splits(StageContext.for_config(cfg))
    train = pq.read_table(reader.splits_dir / "train").column("text").to_pylist()
    real, padding = direct_count(train, 16)
    tokens = first["inputs"]["tokens_per_epoch"]
    assert (tokens["real"], tokens["padding"], tokens["rows"]) == (real, padding, len(train))
    assert tokens["truncated_rows"] > 0 and tokens["total"] == 16 * len(train)
    assert first["data"]["rows"] == {s: v["count"] for s, v in reader.summary()["splits"].items()}

    again = compute_budget(cfg)
    assert computed == ["estimate"] and again["cached"]  # asking twice costs nothing
    assert {k: again[k] for k in ("inputs", "flops", "benchmark")} == {k: first[k] for k in ("inputs", "flops", "benchmark")}
    # measured afresh from the written splits: the same counts as planned from the source
    fresh = compute_budget(cfg, reader, use_cache=False)
    assert fresh["inputs"] == first["inputs"] and fresh["data"]["rows"] == first["data"]["rows"]
    params = fresh["parameters"]
    assert params["total"] == params["trainable"] > 0
    # what the budget depends on changes the key; what it does not, does not
    assert budget_key(cfg.model_copy(update={"training": cfg.training.model_copy(update={"batch_size": 8})})) != budget_key(cfg)
    assert budget_key(cfg.model_copy(update={"training": cfg.training.model_copy(update={"lr": 0.1})})) == budget_key(cfg)
    (data.parent / "reviews.csv").write_text(data.read_text() + "the film was good and new,good\n")
    assert budget_key(cfg) != first["key"]  # the data changed on disk


def test_budget_command_prints_a_table_and_peft_trains_fewer_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [str(SMOKE), "-o", f"storage.root={tmp_path / 'runs'}", "-o", "budget.benchmark_steps=2"]
    assert main(["budget", *base]) == 0
    table = capsys.readouterr().out
    assert "patches per epoch (train)  996 (4 per image of 8x8, patch 4)" in table
    assert "rows                       train 249, val_select 78, val_calib 100, val_test 73" in table
    assert "estimated epoch" in table and "computed" in table
    assert main(["budget", *base]) == 0
    assert "compute budget (cached" in capsys.readouterr().out
    assert main(["budget", *base, "--json", "-o", "training.mode=peft"]) == 0
    peft = json.loads(capsys.readouterr().out)
    assert 0 < peft["parameters"]["trainable"] < peft["parameters"]["total"] and not peft["cached"]
    assert main(["budget", *base, "-o", "training.batch_size=0"]) == 2
    assert "training.batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err
