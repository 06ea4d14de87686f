"""Ray Train on a local Ray with tiny backbones: the shared smoke run answers most
questions; failure/resume, two workers and early stopping each need a run of their own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from ray_app.console import open_console
from ray_app.runs import Run
from ray_app.stages import TRAIN
from ray_app.stages.context import StageContext
from ray_app.stages.splits import ensure_splits
from ray_app.stages.train import run_training
from ray_app.train_failures import failure_line, read_failures
from tests.helpers.configs import smoke_config, trained
from tests.helpers.faults import KillWorkersAt
from trainers.history import HistoryFiles
from trainers.model import build_classifier, load_classifier
from trainers.preprocess import model_inputs, preprocess_image_batch
from trainers.train_loop import LoopParams, fit_classifier

pytestmark = pytest.mark.usefixtures("ray_local")


def history(run: Run) -> list[dict]:
    return [json.loads(x) for x in run.train.metrics.read_text().splitlines()]


def test_smoke_run_metrics_one_row_per_epoch(smoke_run) -> None:
    cfg, run = smoke_run
    rows = history(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    csv_lines = (run.train.metrics_csv).read_text().splitlines()
    assert len(csv_lines) == 1 + 3 and "val_select/accuracy" in csv_lines[0]
    for row in rows:
        assert 0.0 <= row["val_select/accuracy"] <= 1.0 and row["val_select/loss"] > 0
        assert row["train/samples"] == json.loads((run.splits_dir / "splits.json").read_text())["splits"]["train"]["count"]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]  # it learns
    accuracies = [r["val_select/accuracy"] for r in rows]
    info = run.stage_info("train")
    assert info["status"] == "complete" and info["epochs_run"] == 3
    assert info["best_epoch"] == int(np.argmax(accuracies))  # first best epoch wins
    assert run.metadata()["stages"]["splits"]["status"] == "complete"


def test_smoke_run_checkpoints_are_kept_best_and_latest(smoke_run) -> None:
    _, run = smoke_run
    checkpoints = sorted(p for p in run.train.ray_storage.glob("*/checkpoint_*") if p.is_dir())
    assert 1 <= len(checkpoints) <= 2  # checkpoints_to_keep=2: the best and the latest
    for checkpoint in checkpoints:
        assert {"model.safetensors", "optimizer.pt", "train_state.json"} <= {p.name for p in checkpoint.iterdir()}
    epochs = {json.loads((c / "train_state.json").read_text())["epoch"] for c in checkpoints}
    assert 3 in epochs  # the latest (after epoch index 2) is always kept


def test_smoke_run_logits_come_from_the_selected_model(smoke_run) -> None:
    cfg, run = smoke_run
    summary = json.loads((run.splits_dir / "splits.json").read_text())
    model, spec = load_classifier(run.train.model_dir)
    assert spec["selected_epoch"] == run.stage_info("train")["best_epoch"]
    assert run.stage_info("train")["predictions"] == {
        s: [summary["splits"][s]["count"], 10] for s in ("val_calib", "val_test")
    }
    for split in ("val_calib", "val_test"):
        saved = np.load(run.train.predictions(split), allow_pickle=False)
        logits, labels = saved["logits"], saved["labels"]
        assert logits.shape == (summary["splits"][split]["count"], 10) and logits.dtype == np.float32
        counts = np.bincount(labels, minlength=10).tolist()
        assert counts == [summary["splits"][split]["class_counts"][n] for n in summary["label_names"]]
        # recompute in this process from the split's files: same rows, same logits
        table = pq.read_table(run.splits_dir / split).to_pydict()
        spec = StageContext.for_config(cfg).input_spec
        batch = preprocess_image_batch(
            {"image": np.array(table["image"], dtype=object), "label_id": np.array(table["label_id"])}, spec,
        )
        with torch.no_grad():
            local = model(**model_inputs({"pixel_values": torch.as_tensor(batch["pixel_values"])}, spec)).numpy()
        order_saved = np.lexsort((logits[:, 0], labels))
        order_local = np.lexsort((local[:, 0], batch["labels"]))
        np.testing.assert_allclose(logits[order_saved], local[order_local], atol=1e-5)


def test_training_reads_only_train_and_val_select(smoke_run) -> None:
    _, run = smoke_run
    assert run.stage_info("train")["reads"] == {"predict": ["val_calib", "val_test"], "train": ["train", "val_select"]}


def test_fit_refuses_other_splits() -> None:
    cfg = smoke_config(Path("/nonexistent"))
    params = LoopParams(model=cfg.model, training=cfg.training, num_labels=10, train_rows=1, seed=0,
                        history=HistoryFiles("x", "x", "x"))
    with pytest.raises(ValueError, match="exactly train and val_select"):
        fit_classifier(params, {"train": None, "val_select": None, "val_test": None}, cfg.scaling, Path("/tmp"), "x")


def test_killed_worker_resumes_from_last_checkpoint(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # Trained under the console `ray-app train` opens, so what a person would see is
    # checked on the same run.
    cfg = smoke_config(tmp_path, "training.epochs=3")
    ctx = StageContext.for_config(cfg)
    run = ctx.run
    ensure_splits(ctx)
    with open_console(run.log_path, ready=run.exists, argv=["train", "smoke"]) as console:
        ctx.console = console
        with console.stage(1, 1, TRAIN, run):
            run_training(ctx, before_epoch=KillWorkersAt(1))
    screen = "\n".join(capfd.readouterr())
    rows = history(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # each epoch exactly once
    # epoch 0 was trained by the first attempt; after the kill the group restarted
    # from its checkpoint and trained epochs 1 and 2 only: not from epoch 0 again.
    assert [r["attempt"] for r in rows] == [0, 1, 1]
    assert run.stage_info("train")["resumed_at"] == [1]

    # One line on the console for the one failure: the epoch whose checkpoint the
    # restarted group loaded (resumed_at) and the failure count against max_failures.
    told = [line.strip() for line in screen.splitlines() if "worker died" in line or "worker failed" in line]
    resumed, allowed = run.stage_info("train")["resumed_at"][0], cfg.scaling.max_failures
    assert len(told) == 1, screen
    assert re.fullmatch(rf"worker died \(rank 0: [^()]+\); resuming from epoch {resumed}'s checkpoint, "
                        rf"failure 1 of {allowed}", told[0]), told[0]
    # None of Ray's own paragraphs about it: they are in the run's log instead.
    ray_text = ("Traceback", "RayActorError", "ActorDiedError", "WorkerGroupError", "[FailurePolicy]",
                "A worker died or was killed", "The actor is dead", "Graceful shutdown")
    assert not [text for text in ray_text if text in screen], screen
    log = run.log_path.read_text()
    assert told[0] in log and "[FailurePolicy] RETRY" in log and "A worker died or was killed" in log
    assert "Traceback (most recent call last)" in log and "ActorDiedError" in log and "Error count: 1" in log
    events = read_failures(run.train.failures)
    assert [(e["failure"], e["max_failures"], e["retry"], e["resume_epoch"]) for e in events] == [(1, allowed, True, 1)]


def test_two_workers_with_frozen_backbone(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "scaling.num_workers=2", "model.freeze_backbone=true", "training.lr=0.01")
    run = trained(cfg).run
    rows = history(run)
    train_count = json.loads((run.splits_dir / "splits.json").read_text())["splits"]["train"]["count"]
    assert all(r["world_size"] == 2 for r in rows)
    assert all(abs(r["train/samples"] - train_count / 2) <= 1 for r in rows)  # each rank half

    torch.manual_seed(cfg.seed)  # the loop builds its model from this seed
    initial = build_classifier(cfg.model, 10).state_dict()
    weights = load_file(run.train.model_dir / "model.safetensors")
    backbone_keys = [k for k in initial if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(initial[k], weights[k]) for k in backbone_keys)
    assert not torch.equal(initial["head.weight"], weights["head.weight"])  # the head did train


def test_early_stopping_stops_and_keeps_the_best(tmp_path: Path) -> None:
    # An lr too small to change any prediction: accuracy never improves after epoch 0.
    cfg = smoke_config(tmp_path, "training.epochs=6", "training.lr=1e-12",
                       "training.early_stopping.patience=2", "training.ema.enabled=true")
    run = trained(cfg).run
    rows = history(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert run.stage_info("train")["best_epoch"] == 0 and run.stage_info("train")["epochs_run"] == 3


def test_failed_training_is_recorded_not_complete(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, "training.epochs=2", "scaling.max_failures=0")
    run = Run.for_config(cfg)
    with pytest.raises(Exception):
        trained(cfg, before_epoch=KillWorkersAt(1))
    info = run.stage_info("train")
    assert info["status"] == "failed" and info["error"]
    # The failure Ray Train did not retry is told as such.
    [event] = read_failures(run.train.failures)
    assert (event["failure"], event["max_failures"], event["retry"], event["died"]) == (1, 0, False, True)
    assert failure_line(event).endswith("failure 1, over the 0 restart(s) allowed: training stops")
    assert run.stage_info("splits")["status"] == "complete"
    assert not (run.train.model_dir).exists() and not (run.train.predictions_dir).exists()


def test_train_shard_cache_keeps_rows_and_reshuffles() -> None:
    import ray.data

    from trainers.train_loop import TrainShardCache

    ds = ray.data.from_items([{"x": float(i), "labels": i % 3} for i in range(50)])
    shard = ds.iterator()
    cache = TrainShardCache(limit_mb=1)
    first = [b["x"] for b in cache.batches(shard, 8, torch.device("cpu"), seed=1)]
    assert cache.rows is not None and len(cache.rows["x"]) == 50  # kept after one pass
    second = [b["x"] for b in cache.batches(None, 8, torch.device("cpu"), seed=2)]  # no Ray Data needed now
    third = [b["x"] for b in cache.batches(None, 8, torch.device("cpu"), seed=2)]
    flat = [torch.cat(batches) for batches in (first, second, third)]
    assert sorted(flat[0].tolist()) == sorted(flat[1].tolist()) == [float(i) for i in range(50)]
    assert [len(b) for b in second] == [8] * 6 + [2]
    assert not torch.equal(flat[0], flat[1]) and torch.equal(flat[1], flat[2])  # seeded reshuffle

    streaming = TrainShardCache(limit_mb=0)  # 0: never cache
    assert len(torch.cat([b["x"] for b in streaming.batches(shard, 8, torch.device("cpu"), seed=1)])) == 50
    assert streaming.rows is None
