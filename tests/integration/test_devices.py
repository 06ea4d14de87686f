"""Where the model computes: the logits pass asks Ray for GPUs exactly when the run
trains on them (and runs on CPUs otherwise), and the training data is kept in the
object store only when it fits there."""

from __future__ import annotations

import pytest
import ray.data
from ray.data.dataset import MaterializedDataset

from ray_app.stages.context import StageContext
from ray_app.stages.train import data_placement, prepare_training_data
from trainers.predict import InferenceDevice, logits_dataset
from trainers.preprocess import ImageSpec

pytestmark = pytest.mark.usefixtures("ray_local")

SPEC = ImageSpec(8, 1, (0.5,), (0.5,))


def _rows() -> ray.data.Dataset:
    import numpy as np

    from tests.helpers.models import png

    image = png(np.zeros((8, 8), dtype=np.uint8))
    return ray.data.from_items([{"image": image, "label_id": i % 2, "label": str(i % 2)} for i in range(4)])


def test_the_logits_pass_asks_for_gpus_only_when_the_run_trains_on_them(smoke_run, tmp_path) -> None:
    cfg, run = smoke_run
    on_cpu = StageContext(cfg, run).inference_device
    assert on_cpu == InferenceDevice() and on_cpu.torch_device().type == "cpu"
    gpu_cfg = cfg.model_copy(update={
        "scaling": cfg.scaling.model_copy(update={"use_gpu": True, "num_workers": 2}),
        "training": cfg.training.model_copy(update={"precision": "bf16"}),
    })
    on_gpu = StageContext(gpu_cfg, run).inference_device
    assert (on_gpu.num_gpus, on_gpu.precision, on_gpu.actors) == (1.0, "bf16", 2)
    for where, gpus, actors in ((on_gpu, 1.0, 2), (on_cpu, 0.0, 1)):
        predict = logits_dataset({"val_test": _rows()}, SPEC, run.train.model_dir, 4, where)._logical_plan.dag
        assert predict.ray_remote_args["num_gpus"] == gpus
        assert (predict.compute.min_size, predict.compute.max_size) == (actors, actors)


def test_training_data_is_kept_only_when_it_fits_the_object_store(smoke_run, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run = smoke_run
    ctx = StageContext(cfg, run)
    placement = data_placement(ctx)
    summary = ctx.splits.summary()["splits"]
    assert placement["rows"] == summary["train"]["count"] + summary["val_select"]["count"]
    assert placement["estimated_mb"] == pytest.approx(placement["rows"] * (8 * 8 + 8) / 2**20, abs=0.01)  # uint8
    assert placement["materialized"] and run.stage_info("train")["data"] == placement
    assert isinstance(prepare_training_data(ctx)["train"], MaterializedDataset)

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"object_store_memory": 1000.0})
    assert not data_placement(ctx)["materialized"]
    streamed = prepare_training_data(ctx)
    assert not isinstance(streamed["train"], MaterializedDataset)  # preprocessed as it streams
    assert streamed["val_select"].count() == summary["val_select"]["count"]
