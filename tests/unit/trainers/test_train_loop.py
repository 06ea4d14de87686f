"""The training loop's parts that need no Ray: early stopping and checkpoint choice,
the metrics history and progress files, the parameter groups, the train shard cache,
and the per-epoch hook."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.helpers.configs import SMOKE
from tests.helpers.faults import KillWorkersAt
from trainers.config import TrainingConfig
from trainers.history import HistoryFiles, ProgressFile, write_metrics_history
from trainers.optim import param_groups
from trainers.train_loop import EpochStart, LoopParams, TrainShardCache, epoch_row, is_improvement


def history_files(directory: Path) -> HistoryFiles:
    return HistoryFiles(metrics_jsonl=str(directory / "metrics.jsonl"), metrics_csv=str(directory / "metrics.csv"),
                        progress=str(directory / "progress.json"))


def test_early_stopping_comparison() -> None:
    assert is_improvement(0.5, None, "max", 0.0)
    assert is_improvement(0.6, 0.5, "max", 0.05) and not is_improvement(0.54, 0.5, "max", 0.05)
    assert is_improvement(0.4, 0.5, "min", 0.0) and not is_improvement(0.5, 0.5, "min", 0.0)


def test_metrics_history_files(tmp_path: Path) -> None:
    rows = [{"epoch": 0, "val_select/accuracy": 0.5}, {"epoch": 1, "val_select/accuracy": 0.75}]
    files = history_files(tmp_path)
    write_metrics_history(rows, files)
    write_metrics_history(rows, files)  # rewritten, not appended
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines == ["epoch,val_select/accuracy", "0,0.5", "1,0.75"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]  # no temporary left


def test_progress_file_is_rewritten_at_most_every_interval(tmp_path: Path) -> None:
    progress = ProgressFile(tmp_path / "train" / "progress.json", epochs=3, steps=10, interval_s=3600)
    progress.start_epoch(1)  # forced: the epoch's start always shows
    assert json.loads(progress.path.read_text())["step"] == 0
    progress.update(1, 4, 0.7)  # within the interval: not written
    assert json.loads(progress.path.read_text())["step"] == 0
    progress.update(1, 10, 0.5, force=True)
    state = json.loads(progress.path.read_text())
    assert (state["epoch"], state["epochs"], state["step"], state["steps"], state["loss"]) == (1, 3, 10, 10, 0.5)


def _worker(training: TrainingConfig, epochs_seen: int = 0) -> Any:
    """What `epoch_row` reads of a Worker: the params, the schedule's lr, the state."""
    model = torch.nn.Linear(2, 2)
    scheduler = torch.optim.lr_scheduler.ConstantLR(torch.optim.SGD(model.parameters(), lr=0.1), factor=1.0)
    return SimpleNamespace(
        params=SimpleNamespace(training=training), scheduler=scheduler, world=2,
        state={"epoch": epochs_seen, "history": [], "best": None, "best_epoch": None, "stale_epochs": 0,
               "resumed_at": []},
    )


def _val(accuracy: float) -> dict[str, float]:
    return {"loss": 1.0 - accuracy, "accuracy": accuracy, "macro_f1": accuracy}


def test_epoch_rows_choose_the_best_epoch_and_stop_after_patience() -> None:
    training = TrainingConfig.model_validate({"epochs": 10, "early_stopping": {"metric": "accuracy", "patience": 2}})
    worker = _worker(training)
    trained = {"loss": 0.5, "samples": 30, "seconds": 2.0}
    ranks = []
    for epoch, accuracy in enumerate([0.5, 0.7, 0.7, 0.6]):
        row = epoch_row(worker, epoch, trained, _val(accuracy))
        ranks.append(row["checkpoint_rank"])
    assert worker.state["best_epoch"] == 1 and worker.state["epoch"] == 4
    # a tie is no improvement; a new best outranks every earlier checkpoint
    assert ranks == [0, 1, -1, -1]
    assert worker.state["stopped_early"] is True  # two stale epochs, patience 2
    assert row["train/samples_per_s"] == pytest.approx(30 * 2 / 2.0)  # every rank's samples
    assert [r["epoch"] for r in worker.state["history"]] == [0, 1, 2, 3]


def test_loss_is_minimised_and_the_last_epoch_is_not_an_early_stop() -> None:
    training = TrainingConfig.model_validate({"epochs": 2, "early_stopping": {"metric": "loss", "patience": 1}})
    worker = _worker(training)
    trained = {"loss": 0.5, "samples": 10, "seconds": 1.0}
    epoch_row(worker, 0, trained, _val(0.9))  # loss 0.1
    epoch_row(worker, 1, trained, _val(0.5))  # loss 0.5: worse
    assert worker.state["best_epoch"] == 0
    assert worker.state["stopped_early"] is False  # patience ran out on the last planned epoch anyway


def test_weight_decay_skips_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)  # frozen tensors are not optimised at all
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(3,), (3,)]  # the norm's weight and bias


def test_steps_per_epoch_split_the_rows_over_workers() -> None:
    from ray_app.config import load_config

    cfg = load_config(SMOKE, ["training.batch_size=16"])
    params = LoopParams(model=cfg.model, training=cfg.training, num_labels=10, train_rows=100, seed=0,
                        history=history_files(Path("/tmp")))
    assert params.steps_per_epoch(1) == 7 and params.steps_per_epoch(2) == 4 and params.steps_per_epoch(200) == 1
    assert params.peft_setup() is None  # baseline mode


class _Shard:
    """A stand-in for a Ray Data shard: counts how often it is streamed."""

    def __init__(self, rows: int) -> None:
        self.rows, self.passes = rows, 0

    def iter_torch_batches(self, batch_size: int, **_: Any) -> Any:
        self.passes += 1
        for start in range(0, self.rows, batch_size):
            index = torch.arange(start, min(start + batch_size, self.rows))
            yield {"labels": index, "pixel_values": index.float()[:, None]}


def test_train_shard_cache_streams_once_then_reshuffles_in_memory() -> None:
    shard, cache = _Shard(10), TrainShardCache(limit_mb=1)
    first = [b["labels"] for b in cache.batches(shard, 4, torch.device("cpu"), seed=0)]
    second = [b["labels"] for b in cache.batches(shard, 4, torch.device("cpu"), seed=1)]
    assert shard.passes == 1  # the second epoch came from memory
    assert sorted(torch.cat(second).tolist()) == list(range(10)) == sorted(torch.cat(first).tolist())
    assert torch.cat(second).tolist() != list(range(10))  # reshuffled
    uncached = TrainShardCache(limit_mb=0)
    for seed in (0, 1):
        list(uncached.batches(shard, 4, torch.device("cpu"), seed=seed))
    assert shard.passes == 3  # a limit of 0 streams every epoch


def test_the_fault_hook_kills_only_the_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("tests.helpers.faults.os._exit", exits.append)
    monkeypatch.setattr("tests.helpers.faults.time.sleep", lambda seconds: None)
    hook = KillWorkersAt(epoch=1)
    hook(EpochStart(epoch=0, rank=0, attempt=0))
    hook(EpochStart(epoch=1, rank=1, attempt=1))  # the restarted group trains on
    assert exits == []
    hook(EpochStart(epoch=1, rank=0, attempt=0))
    assert exits == [1]


def test_speed_options_apply_on_gpus_only() -> None:
    from trainers.train_loop import speed_options

    training = TrainingConfig.model_validate({"compile": False, "fused_optimizer": True, "tf32": True})
    assert speed_options(training, torch.device("cpu")) == {"tf32": False, "fused_optimizer": False, "compile": False}
    assert speed_options(training.model_copy(update={"compile": True}), torch.device("cpu"))["compile"] is True


def test_the_validation_cache_keeps_this_ranks_batches_after_one_pass() -> None:
    from trainers.train_loop import ValidationCache

    shard = _Shard(10)
    cache = ValidationCache(limit_mb=1)
    first = [b["labels"].tolist() for b in cache.batches(shard, 3, torch.device("cpu"), rank=1, world=2)]
    assert first == [[3, 4, 5], [9]]  # every other batch, starting at this rank's
    again = [b["labels"].tolist() for b in cache.batches(shard, 3, torch.device("cpu"), rank=1, world=2)]
    assert again == first and shard.passes == 1  # preprocessed and read once
    streaming = ValidationCache(limit_mb=0)
    for _ in range(2):
        list(streaming.batches(shard, 3, torch.device("cpu")))
    assert shard.passes == 3


def test_layer_decay_and_the_heads_rate_give_each_parameter_its_learning_rate() -> None:
    from tests.helpers.models import model_cfg
    from trainers.model import build_classifier

    model = build_classifier(model_cfg(), 3)  # a 2-block ViT
    groups = param_groups(model, 0.05, lr=1e-3, head_lr_scale=10.0, layer_decay=0.5)
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(rate) == len(named)  # every trainable parameter in exactly one group

    def lr_of(name: str) -> float:
        return rate[id(named[name])][0]

    assert lr_of("head.weight") == pytest.approx(1e-2)  # the fresh head: 10x
    assert lr_of("backbone.layernorm.weight") == pytest.approx(1e-3)  # after the blocks: the full rate
    assert lr_of("backbone.layers.1.attention.q_proj.weight") == pytest.approx(5e-4)
    assert lr_of("backbone.layers.0.attention.q_proj.weight") == pytest.approx(2.5e-4)
    assert lr_of("backbone.embeddings.patch_embeddings.projection.weight") == pytest.approx(1.25e-4)
    assert rate[id(named["backbone.layers.0.attention.q_proj.bias"])][1] == 0.0  # no decay on biases
    flat = param_groups(model, 0.05, lr=1e-3)  # no decay, no head scale: one rate
    assert {g["lr"] for g in flat} == {1e-3}
