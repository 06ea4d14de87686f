"""bench/gpu_pipeline.py in its CPU mode (a tiny ViT on a few hundred images): every
part of the GPU benchmark runs, so it cannot rot while no GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.configs import REPO


def test_the_gpu_benchmark_runs_end_to_end_in_its_cpu_mode(tmp_path: Path) -> None:
    out = tmp_path / "gpu_pipeline.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_pipeline.py"), "--device", "cpu", "--size", "tiny", "--rows", "600",
         "--epochs", "2", "--steps", "3", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert (result["device"], result["gpus"], result["precision"]) == ("cpu", 0, "fp32")
    for mode in ("baseline", "peft"):
        assert result["plain"][mode]["samples_per_s"] > 0 and result["ray_app"][mode]["samples_per_s"] > 0
        assert result[f"{mode}_vs_plain"] == round(
            result["ray_app"][mode]["samples_per_s"] / result["plain"][mode]["samples_per_s"], 3)
    whole = result["ray_app"]["baseline"]
    assert set(whole["stage_seconds"]) == {"splits", "train", "calibrate", "evaluate", "insights", "export"}
    assert 0 < whole["first_step_s"] < whole["total_s"] and whole["first_step_after_train_start_s"] is not None
    assert whole["data"]["materialized"] and whole["budget"]["parameters"] > 0
    assert set(result["ray_app"]["peft"]["stage_seconds"]) == {"splits", "train"}
    # the logits pass covers val_calib and val_test, the bare forward the same model
    assert result["logits_pass"]["rows"] > 0 and result["bare_forward"]["rows_per_s"] > 0
    assert 100e3 < result["train_gflop_per_sample"] * 1e9 < 100e6  # a tiny ViT on 32 px
    assert result["targets"]["train_vs_plain"] == 0.95
