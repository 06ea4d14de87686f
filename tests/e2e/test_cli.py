"""The `ray-app` command as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from PIL import Image

from ray_app.cli import COMMANDS, main
from ray_app.ray_runtime import free_port
from tests.helpers.configs import REPO, SMOKE


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


def test_sweep_space_errors_exit_2_before_ray_starts(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  training.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n  training.lr: {grid: [0.1, 0]}\n")
    result = cli("sweep", str(SMOKE), "--space", str(space), "-o", f"storage.root={tmp_path / 'runs'}", timeout=120)
    assert_user_error(
        result,
        "space key 'training.learning_rate' is not a config field; did you mean 'training.lr'?",
    )
    assert not (tmp_path / "runs").exists()
    result = cli("sweep", str(SMOKE), "--space", str(tmp_path / "nope.yaml"))
    assert_user_error(result, "nope.yaml' does not exist")


def test_init_from_a_missing_run_exit_2_before_ray_starts(tmp_path: Path) -> None:
    result = cli("train", str(SMOKE), "-o", "model.init_from=no_such_run", "-o", f"storage.root={tmp_path}", timeout=120)
    assert_user_error(result, "model.init_from: no run named 'no_such_run'")
    assert not list(tmp_path.iterdir())


def test_a_finished_run_is_not_retrained_with_another_config_exit_2(tmp_path: Path) -> None:
    from ray_app.runs import Run
    from tests.helpers.configs import smoke_config

    cfg = smoke_config(tmp_path)
    Run.for_config(cfg).prepare(cfg)
    recorded = Run.for_config(cfg).config_path.read_text()
    result = cli("run", str(SMOKE), "-o", f"storage.root={tmp_path}", "-o", "training.lr=0.05", timeout=120)
    assert_user_error(result, f"run '{Run.for_config(cfg).name}' exists", "training.lr", "--on-exists new",
                      "--on-exists resume", "--on-exists replace")
    assert "Started a local Ray instance" not in result.stderr
    assert Run.for_config(cfg).config_path.read_text() == recorded
    bad_choice = cli("train", str(SMOKE), "--on-exists", "overwrite", timeout=60)
    assert bad_choice.returncode == 2 and "invalid choice: 'overwrite'" in bad_choice.stderr


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


NOISE = ("TrainingReport(", "Checkpoint successfully created", "Execution plan", "tensorboard --logdir")


@pytest.fixture(scope="module")
def smoke_cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`ray-app run configs/smoke.yaml` (2 epochs) once, as a user runs it, without a
    terminal: the runs root and what the command printed."""
    root = tmp_path_factory.mktemp("cli") / "runs"
    ran = cli("run", str(SMOKE), "-o", "training.epochs=2", "-o", f"storage.root={root}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    return root, ran


def test_run_console_shows_progress_and_the_log_keeps_everything(smoke_cli_run) -> None:
    root, ran = smoke_cli_run
    lines = ran.stdout.splitlines()
    stage_lines = [x for x in lines if x.startswith("[")]
    assert [x.split()[0:2] for x in stage_lines] == [
        ["[1/6]", "splits"], ["[2/6]", "train"], ["[2/6]", "train"], ["[3/6]", "calibrate"],
        ["[4/6]", "evaluate"], ["[5/6]", "insights"], ["[6/6]", "export"],
    ]
    assert stage_lines[1] == "[2/6] train     baseline, up to 2 epochs on 1 CPU worker"
    assert all(" done in " in x for x in stage_lines if x != stage_lines[1])
    epochs = [x for x in lines if re.match(r"  epoch \d+/\d+", x)]  # not the summary's "epoch time" row
    assert [x.split()[1] for x in epochs] == ["1/2", "2/2"]
    assert all("val_select loss" in x and "accuracy" in x for x in epochs)
    assert any(x.startswith("  val_test accuracy") for x in lines) and any("serve it" in x for x in lines)
    assert any(x.startswith("  linear reference") and "vs" in x for x in lines)
    assert any(x.startswith("  epoch time") and "estimated" in x and "measured" in x for x in lines)
    for noise in NOISE:
        assert noise not in ran.stdout + ran.stderr
    assert "Started a local Ray instance" not in ran.stdout + ran.stderr

    log = (root / "smoke_vit_baseline_s0" / "logs" / "run.log").read_text()
    for noise in NOISE:
        assert noise in log  # not lost: kept in the run's log
    assert "(RayTrainWorker pid=" in log  # the workers' output, forwarded by Ray
    for line in stage_lines + epochs:
        assert line.strip() in log
    assert re.search(r"^\S+ \[train\] \(RayTrainWorker pid=\d+\) epoch 2/2: train/loss=", log, re.MULTILINE)
    assert re.search(r"^\S+ \[-\] ==== end: exit 0 after [\d.]+s ====$", log, re.MULTILINE)

    shown = cli("runs", "show", "smoke_vit_baseline_s0", "--root", str(root))
    assert f"logs     {root / 'smoke_vit_baseline_s0' / 'logs' / 'run.log'}" in shown.stdout


def test_runs_list_show_calibrate_evaluate_resume_and_serve(smoke_cli_run) -> None:
    """The README's flow, as separate processes, on the run made by `ray-app run`."""
    root, _ = smoke_cli_run
    listed = cli("runs", "list", "--root", str(root))
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("smoke_vit_baseline_s0"))
    assert line.split()[1:3] == ["complete", "complete"]

    shown = cli("runs", "show", "smoke_vit_baseline_s0", "--root", str(root))
    assert shown.returncode == 0
    assert "train    complete" in shown.stdout and "val_test" in shown.stdout
    epoch_rows = [x for x in shown.stdout.splitlines() if re.match(r"\s+[01] ", x)]
    assert len(epoch_rows) == 2

    # calibrate by run name, evaluate by config: both find the same run
    calibrated = cli("calibrate", "smoke_vit_baseline_s0", "--root", str(root), "-o", "calibration.policy=threshold")
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    assert "policy:  threshold" in calibrated.stdout
    assert (root / "smoke_vit_baseline_s0" / "calibration" / "report.md").is_file()
    recorded = yaml.safe_load((root / "smoke_vit_baseline_s0" / "config.yaml").read_text())
    assert recorded["calibration"]["policy"] == "threshold"  # config.yaml describes the run as it now is
    evaluated = cli("evaluate", str(SMOKE), "-o", f"storage.root={root}", "-o", "training.epochs=2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "policy threshold: coverage" in evaluated.stdout
    assert (root / "smoke_vit_baseline_s0" / "eval" / "metrics.json").is_file()

    # `run` on the same config resumes: done stages are skipped, the rest complete
    ran = cli("run", str(SMOKE), "-o", f"storage.root={root}", "-o", "training.epochs=2",
              "-o", "calibration.policy=threshold")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "[2/6] train     complete for this config, skipped" in ran.stdout
    assert "[6/6] export    done in" in ran.stdout
    assert "val_test accuracy" in ran.stdout and "(verified; smoke_vit_baseline_s0@" in ran.stdout
    bundle = root / "smoke_vit_baseline_s0" / "bundle"
    assert (bundle / "bundle.json").is_file()
    assert f"ray-app serve {bundle}" in ran.stdout  # the summary says how to serve it

    # then serve the bundle and get one prediction over HTTP, as the README shows
    answer = serve_one_prediction(bundle, root / "smoke_vit_baseline_s0" / "splits" / "val_test")
    assert answer["model_version"] == json.loads((bundle / "bundle.json").read_text())["model_version"]
    assert answer["predictions"][0]["decision"] in ("accept", "assist", "abstain")


def test_a_failed_stage_is_in_the_log_and_ray_app_logs_prints_it(smoke_cli_run, tmp_path: Path) -> None:
    root, _ = smoke_cli_run
    copy = tmp_path / "runs"
    shutil.copytree(root / "smoke_vit_baseline_s0", copy / "smoke_vit_baseline_s0")
    failed = cli("calibrate", "smoke_vit_baseline_s0", "--root", str(copy),
                 "-o", "calibration.temperature.min_samples=100000")
    assert_user_error(failed, "temperature scaling needs at least 100000")
    assert "[1/1] calibrate failed after" in failed.stdout
    meta = json.loads((copy / "smoke_vit_baseline_s0" / "metadata.json").read_text())
    assert meta["stages"]["calibrate"]["status"] == "failed"
    assert "temperature scaling needs at least 100000" in meta["stages"]["calibrate"]["error"]

    logs = cli("logs", "smoke_vit_baseline_s0", "--root", str(copy), "--tail", "5")
    assert logs.returncode == 0, logs.stderr
    tail = logs.stdout.splitlines()
    assert len(tail) == 5
    assert any("[error] error: calibration of run 'smoke_vit_baseline_s0'" in x and "needs at least 100000" in x
               for x in tail)
    assert "==== end: failed (exit 2)" in tail[-1]
    # the earlier, successful commands are still there: the log is appended, never replaced
    whole = (copy / "smoke_vit_baseline_s0" / "logs" / "run.log").read_text()
    ends = re.findall(r"==== end: (.*) after", whole)
    assert "==== start: ray-app run " in whole.splitlines()[0]
    assert ends[0] == "exit 0" and ends[-1] == "failed (exit 2)" and len(ends) >= 2

    # A guardrail grid with no band the model can meet: the error gives the coverage the
    # grid could reach and how to calibrate again (the dashboard test does so by resuming).
    no_band = cli("calibrate", "smoke_vit_baseline_s0", "--root", str(copy), "-o", "calibration.policy=guardrail",
                  "-o", "calibration.guardrail.centers=[0.999]", "-o", "calibration.guardrail.widths=[0.0]")
    assert_user_error(no_band, "no band met max_assist_rate 0.2 and min_coverage 0.5 on val_calib: the most any band "
                      "accepted within the assist limit was", "(center 0.999, width 0)", "The trained model is kept: "
                      "`ray-app calibrate smoke_vit_baseline_s0 -o calibration.<key>=<value>`")
    reached = int(re.search(r"within the assist limit was (\d+)%", no_band.stderr).group(1))
    assert reached < 50


def test_missing_config_answers_at_once_without_heavy_imports(tmp_path: Path) -> None:
    best = min(_timed_missing_config(tmp_path) for _ in range(3))
    assert best < 1.0, f"ray-app run missing.yaml took {best:.2f}s"
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from ray_app.cli import main; code = main(['run', 'missing.yaml']); "
         "print(code, sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert probe.stdout.split() == ["2", "[]"], probe.stdout + probe.stderr


def _timed_missing_config(cwd: Path) -> float:
    started = time.monotonic()
    result = cli("run", "missing.yaml", cwd=cwd, timeout=60)
    elapsed = time.monotonic() - started
    assert_user_error(result, "config file 'missing.yaml' does not exist")
    return elapsed


def serve_one_prediction(bundle: Path, val_test: Path) -> dict:
    """`ray-app serve BUNDLE` in its own process: wait for its URL, POST one PNG from
    val_test, stop it with Ctrl-C and check it exits cleanly."""
    port = free_port()
    # Its own process group: if it does not stop, the whole group (its Ray, whose Serve
    # would hold the replica ports the later Serve tests need) is killed, not left behind.
    server = subprocess.Popen(
        [sys.executable, "-m", "ray_app", "serve", str(bundle), "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    try:
        for line in server.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving at "):
                break
        assert lines and lines[-1].startswith(f"serving at http://127.0.0.1:{port}/predict"), "".join(lines[-40:])
        image = pq.read_table(val_test).column("image")[0].as_py()
        response = requests.post(f"http://127.0.0.1:{port}/predict",
                                 json={"inputs": [{"image": base64.b64encode(image).decode()}]}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            rest, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
        assert server.returncode == 0, "".join(lines[-20:]) + rest[-3000:]
        assert "stopping" in rest and "Traceback" not in rest


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    assert_user_error(cli("serve", str(tmp_path)), "is not a bundle: it has no bundle.json")
    bundle = make_bundle(tmp_path)
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    assert_user_error(cli("serve", str(bundle)), "do not match their sha256")
    bundle = make_bundle(tmp_path / "again")
    assert_user_error(cli("serve", str(bundle), "-o", "max_batch_size=0", "-o", "max_batchsize=4"),
                      "max_batch_size: Input should be greater than or equal to 1", "did you mean 'max_batch_size'?")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("serve", str(bundle), "--port", str(taken.getsockname()[1]))
    assert_user_error(busy, "cannot listen on 127.0.0.1:", "choose another with --port")


def test_serve_print_config_is_a_serve_deploy_file(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    bundle = make_bundle(tmp_path)
    printed = cli("serve", str(bundle), "--print-config", "-o", "token=secret", "-o", "top_k=5")
    assert printed.returncode == 0, printed.stderr
    written = yaml.safe_load(printed.stdout)
    ServeDeploySchema.model_validate(written)
    app = written["applications"][0]
    assert app["args"]["bundle"] == str(bundle) and "token" not in app["args"]
    assert app["deployments"][0]["user_config"]["top_k"] == 5
    assert "secret" not in printed.stdout


def make_bundle(directory: Path) -> Path:
    """A small untrained image bundle (no Ray)."""
    import torch

    from calibration.policy import Policy
    from serve.bundle import export_bundle
    from tests.helpers.models import model_cfg
    from trainers.model import build_classifier, save_classifier
    from trainers.preprocess import ImageSpec

    torch.manual_seed(0)
    cfg = model_cfg()
    save_classifier(build_classifier(cfg, 3), cfg, ["a", "b", "c"], directory / "model",
                    extra={"preprocessing": ImageSpec(8, 1, (0.5,), (0.5,)).to_dict()})
    return export_bundle(directory / "model", Policy(), directory / "bundle", {"run": "cli"})
