"""The `ray-app` command as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_app.cli import COMMANDS, main
from tests.conftest import REPO, SMOKE


def cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ray_app", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0 and "example: ray-app " + command in result.stdout


def test_config_errors_all_at_once_exit_2(tmp_path: Path) -> None:
    result = cli("train", str(SMOKE), "-o", "training.epochz=2", "-o", "training.lr=fast", "-o", "oops")
    assert_user_error(
        result,
        "3 problem(s)",
        "override 'oops': expected dotted.key=value",
        "training.epochz: unknown key; did you mean 'epochs'?",
        "training.lr: Input should be a valid number",
    )
    assert not (REPO / "runs").exists() or not list((REPO / "runs").glob("smoke_*"))


def test_missing_config_file() -> None:
    assert_user_error(cli("splits", "configs/nope.yaml"), "config file 'configs/nope.yaml' does not exist")


def test_missing_data_path_fails_before_ray_starts(tmp_path: Path) -> None:
    result = cli("train", str(SMOKE), "-o", "data.source.kind=image_folder",
                 "-o", f"data.source.path={tmp_path / 'missing'}", "-o", f"storage.root={tmp_path / 'runs'}",
                 timeout=60)
    assert_user_error(result, f"data.source.path '{tmp_path / 'missing'}' does not exist")
    assert "Started a local Ray instance" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_calibrate_before_training_exit_2(tmp_path: Path) -> None:
    result = cli("calibrate", str(SMOKE), "-o", f"storage.root={tmp_path}", timeout=60)
    assert_user_error(result, "has no val_calib logits", "train it first")
    assert_user_error(cli("evaluate", "ghost", "--root", str(tmp_path)), "no run named 'ghost'")


def test_runs_show_unknown_run(tmp_path: Path) -> None:
    assert_user_error(cli("runs", "show", "ghost", "--root", str(tmp_path)), "no run named 'ghost'")


@pytest.mark.usefixtures("ray_local")
def test_bad_data_through_the_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process main() on the session's Ray: the same code path as the console script.
    path = tmp_path / "d.parquet"
    pixels = np.zeros((8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    pq.write_table(pa.table({"image": [buffer.getvalue()] * 8, "class": ["a", "b"] * 4}), path)
    base = [str(SMOKE), "-o", "data.source.kind=parquet", "-o", f"data.source.path={path}",
            "-o", "data.source.image_column=image", "-o", f"storage.root={tmp_path / 'runs'}"]
    assert main(["splits", *base]) == 2
    assert "no label column 'label'; the data has columns ['image', 'class'" in capsys.readouterr().err
    assert main(["splits", *base, "-o", "data.source.label_column=class"]) == 2
    err = capsys.readouterr().err
    assert "too small to stratify" in err  # 8 identical images: one distinct sample per class
    assert not (tmp_path / "runs").exists()


def test_train_then_runs_list_and_show(tmp_path: Path) -> None:
    """The README's flow, as separate processes: train, then find the run by scanning."""
    root = tmp_path / "runs"
    trained = cli("train", str(SMOKE), "-o", "training.epochs=1", "-o", f"storage.root={root}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "run smoke_vit_baseline_s0: training baseline" in trained.stdout
    assert "done in" in trained.stdout and "best epoch 0" in trained.stdout

    listed = cli("runs", "list", "--root", str(root))
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("smoke_vit_baseline_s0"))
    assert line.split()[1:3] == ["complete", "complete"]

    shown = cli("runs", "show", "smoke_vit_baseline_s0", "--root", str(root))
    assert shown.returncode == 0
    assert "train    complete" in shown.stdout and "val_test" in shown.stdout
    epoch_rows = [x for x in shown.stdout.splitlines() if x.strip().startswith("0 ")]
    assert len(epoch_rows) == 1

    # calibrate by run name, evaluate by config: both find the same run
    calibrated = cli("calibrate", "smoke_vit_baseline_s0", "--root", str(root), "-o", "calibration.policy=threshold")
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    assert "policy:  threshold" in calibrated.stdout
    assert (root / "smoke_vit_baseline_s0" / "calibration" / "report.md").is_file()
    evaluated = cli("evaluate", str(SMOKE), "-o", f"storage.root={root}", "-o", "training.epochs=1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "policy threshold: coverage" in evaluated.stdout
    assert (root / "smoke_vit_baseline_s0" / "eval" / "metrics.json").is_file()

    # `run` on the same config resumes: done stages are skipped, the rest complete
    ran = cli("run", str(SMOKE), "-o", f"storage.root={root}", "-o", "training.epochs=1",
              "-o", "calibration.policy=threshold")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "[2/5] train     complete for this config, skipped" in ran.stdout
    assert "[5/5] export    done in" in ran.stdout
    assert "val_test accuracy" in ran.stdout and "(verified; smoke_vit_baseline_s0@" in ran.stdout
    assert (root / "smoke_vit_baseline_s0" / "bundle" / "bundle.json").is_file()
