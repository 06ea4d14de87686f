"""Stage orchestration: splits -> train -> calibrate -> evaluate -> export.

Each stage checks its inputs before it writes anything, runs inside `Run.stage` (so
metadata says running / complete / failed with timings), reads splits and predictions
only through the split contract, and is skipped by `run_pipeline` when it is already
complete for the same fingerprint of the config sections it depends on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from calibration.evaluate import evaluate_under_policy
from calibration.guardrail import tune_guardrail
from calibration.metrics import calibration_summary, probabilities
from calibration.policy import Policy
from calibration.report import draw_views, write_report
from calibration.risk_control import learn_then_test
from calibration.temperature import CalibrationError, fit_temperature
from calibration.threshold import candidate_thresholds, choose_threshold, sweep_thresholds
from calibration.views import calibration_views
from ray_app.config import AppConfig, backbone_names
from ray_app.console import Console
from ray_app.errors import UserError
from ray_app.runs import STAGES, Run, library_versions, resolve_run
from ray_app.sources import inspect_rows, raise_on_bad_rows, read_source
from ray_app.splits import SplitReader, check_access, plan_splits, write_splits
from serve.bundle import export_bundle, load_bundle
from trainers.baseline import LoopParams, fit_baseline
from trainers.checkpoint import selected_model
from trainers.model import WEIGHTS_FILE, InitBackbone, backbone_mismatch, build_classifier, file_sha256, save_classifier
from trainers.predict import predict_outputs
from trainers.preprocess import (
    ImageSpec,
    TextSpec,
    check_text_backbone_fits,
    preprocess_dataset,
    resolve_image_spec,
    resolve_text_spec,
)

FAIL_AT_EPOCH_ENV = "RAY_APP_FAIL_AT_EPOCH"
API_SERVER_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # read by Ray's state API

_TRAINED_ON = ("seed", "data", "model", "training", "scaling")
# The config sections each stage's output depends on: a stage whose sections did not
# change is still valid (changing calibration.policy does not retrain; changing
# insights.* recomputes the insights only).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "splits": ("seed", "data"),
    "train": _TRAINED_ON,
    "calibrate": (*_TRAINED_ON, "calibration"),
    "evaluate": (*_TRAINED_ON, "calibration"),
    "insights": (*_TRAINED_ON, "calibration", "insights"),
    "export": (*_TRAINED_ON, "calibration"),
}


def stage_fingerprint(cfg: AppConfig, stage: str) -> str:
    return cfg.fingerprint(*STAGE_SECTIONS[stage])


def init_ray(cfg: AppConfig) -> None:
    """Connect to the configured cluster (or RAY_ADDRESS, as under `ray job submit`),
    else start a local Ray in-process with room for the workers plus Ray Data."""
    if not sys.stdout.isatty():
        # Ray Data's progress bars become thousands of log lines without a terminal;
        # the stages print their own progress instead. Set before ray.init so the
        # local workers inherit it.
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    needed = math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker) + 1
    start_local_ray(cfg.ray.num_cpus or max(os.cpu_count() or 1, needed))


def start_local_ray(num_cpus: int) -> Any:
    """A Ray of our own in this process, its dashboard on a free loopback port that
    every Ray process knows.

    address="local": start our own Ray even when `ray start` left a cluster on this
    machine (a bare ray.init() would attach to it and refuse num_cpus). The API server
    address goes into the environment before the raylet starts, so every worker
    inherits it: Ray Train's placement-group cleaner finds its cluster through the
    state API, which otherwise auto-detects the address and fails when a machine runs
    two Rays. A failed cleaner leaks the CPUs of every sweep trial ASHA stops, and the
    sweep then waits forever for them. The driver's own environment is restored after:
    the Ray processes have their copy, and subprocesses of this one (which may start
    Rays of their own) must not inherit this one's address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    previous = os.environ.get(API_SERVER_ADDRESS_ENV)
    os.environ[API_SERVER_ADDRESS_ENV] = f"http://127.0.0.1:{port}"
    try:
        return ray.init(address="local", num_cpus=num_cpus, dashboard_port=port)
    finally:
        if previous is None:
            os.environ.pop(API_SERVER_ADDRESS_ENV)
        else:
            os.environ[API_SERVER_ADDRESS_ENV] = previous


# --- splits ---------------------------------------------------------------------------


def _read_and_plan(cfg: AppConfig) -> tuple[ray.data.Dataset, Any]:
    """Read, check and plan everything before any directory is touched: bad data stops
    here and leaves nothing behind."""
    source = cfg.data.source
    inspected = inspect_rows(read_source(source), source)
    index = inspected.select_columns(["content_hash", "label", "ref", "error"]).to_pandas()
    raise_on_bad_rows(index)
    plan = plan_splits(
        index["content_hash"].tolist(), index["label"].tolist(), cfg.data.splits, cfg.seed, source
    )
    return inspected, plan


def _split_details(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "counts": {s: v["count"] for s, v in summary["splits"].items()},
        "duplicates": summary["duplicates"],
    }


def ensure_splits(cfg: AppConfig, run: Run, force: bool = False) -> SplitReader:
    fingerprint = stage_fingerprint(cfg, "splits")
    if not force and run.stage_complete("splits", fingerprint):
        return SplitReader(run.splits_dir)
    inspected, plan = _read_and_plan(cfg)
    run.prepare(cfg)
    with run.stage("splits", fingerprint) as details:
        write_splits(inspected, plan, run.splits_dir)
        details.update(_split_details(plan.summary))
    return SplitReader(run.splits_dir)


def write_shared_splits(cfg: AppConfig, splits_dir: Path) -> SplitReader:
    """Splits written outside any run, for runs that share them (a sweep's trials):
    every trial then trains and selects on exactly the same rows."""
    inspected, plan = _read_and_plan(cfg)
    shutil.rmtree(splits_dir, ignore_errors=True)
    write_splits(inspected, plan, splits_dir)
    return SplitReader(splits_dir)


def adopt_splits(cfg: AppConfig, run: Run, shared: SplitReader) -> SplitReader:
    """Give a run a copy of shared splits (same seed and data section, so the same
    fingerprint `ensure_splits` would record); later stages cannot tell the difference."""
    fingerprint = stage_fingerprint(cfg, "splits")
    if run.stage_complete("splits", fingerprint):
        return SplitReader(run.splits_dir)
    run.prepare(cfg)
    with run.stage("splits", fingerprint) as details:
        shutil.rmtree(run.splits_dir, ignore_errors=True)
        shutil.copytree(shared.splits_dir, run.splits_dir)
        details.update(_split_details(shared.summary()), copied_from=str(shared.splits_dir))
    return SplitReader(run.splits_dir)


# --- train ----------------------------------------------------------------------------


def resolve_input_spec(cfg: AppConfig) -> ImageSpec | TextSpec:
    try:
        if cfg.data.source.modality == "image":
            return resolve_image_spec(cfg.model)
        spec = resolve_text_spec(cfg.model)
        check_text_backbone_fits(cfg.model, spec)
        return spec
    except (OSError, ValueError) as exc:
        where = cfg.model.backbone.id or "model.backbone.config"
        hint = " A backbone id must be a local directory on hosts without hub access." if cfg.model.backbone.id else ""
        raise UserError(f"cannot prepare inputs for backbone '{where}': {exc}.{hint}") from None


def resolve_init_from(cfg: AppConfig) -> Path | None:
    """model.init_from as the source run's saved model directory, or a user error: no
    such run, a run without a trained model, a different backbone, or this run itself."""
    if cfg.model.init_from is None:
        return None
    root = Path(cfg.storage.root)
    try:
        source = resolve_run(cfg.model.init_from, root)
    except UserError as exc:
        raise UserError(f"model.init_from: {exc}".replace(", or --root", " (resolved under storage.root)")) from None
    if source.root.resolve() == Run.for_config(cfg).root.resolve():
        raise UserError(
            f"model.init_from names this run itself ('{source.name}'): training replaces its model "
            "first; start from another run, or change name_pattern"
        )
    model_dir = source.train_dir / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise UserError(
            f"model.init_from: run '{source.name}' has no trained model ({model_dir}); train it "
            f"first: ray-app train {source.root / 'config.yaml'}"
        )
    mismatch = backbone_mismatch(cfg.model.backbone, model_dir)
    if mismatch:
        raise UserError(
            f"model.init_from: run '{source.name}' has a different backbone ({mismatch}); "
            "model.backbone must match the source run's architecture"
        )
    return model_dir.resolve()


def check_training_setup(cfg: AppConfig) -> Path | None:
    """Training setups that cannot work are user errors found on the driver, before
    Ray starts: a PEFT plan whose targets match nothing or that unfreezes too many
    blocks (from the backbone's module names alone), and a bad model.init_from.
    Returns model.init_from resolved (see resolve_init_from)."""
    init_dir = resolve_init_from(cfg)
    if cfg.training.mode != "peft":
        return init_dir
    from trainers.adapters import PeftSetupError, check_peft_setup

    try:
        check_peft_setup(cfg.model, cfg.training.peft)
    except PeftSetupError as exc:
        raise UserError(str(exc)) from None
    return init_dir


def _failure_injection() -> int | None:
    value = os.environ.get(FAIL_AT_EPOCH_ENV)
    return int(value) if value else None


def prepare_training_data(cfg: AppConfig, reader: SplitReader) -> dict[str, ray.data.Dataset]:
    """train and val_select preprocessed once and kept in the object store: every epoch
    then iterates ready batches instead of re-reading and re-decoding the split."""
    spec = resolve_input_spec(cfg)
    return {s: preprocess_dataset(reader.read(s, "train"), spec).materialize() for s in ("train", "val_select")}


def run_training(
    cfg: AppConfig,
    run: Run,
    reader: SplitReader,
    prepared: dict[str, ray.data.Dataset] | None = None,
    train_callbacks: list[Any] | None = None,
    record_budget: bool = False,
) -> dict[str, Any]:
    """Train on Ray Train, keep the selected model, export val_calib / val_test logits
    (and val_test's pooled features and row ids, for the run's insights).

    A sweep passes `prepared` (its trials share one preprocessed copy of the splits)
    and `train_callbacks` (Ray Train callbacks, e.g. the one reporting to Tune).
    `record_budget`: estimate the epoch time first (`ray_app.budget`, cached) and
    record it with the measured one; a sweep's trials leave it off, since they share
    the machine with each other and the estimate would time the contention."""
    summary = reader.summary()
    label_names: list[str] = summary["label_names"]
    spec = resolve_input_spec(cfg)
    init_dir = check_training_setup(cfg)
    init_backbone = None if init_dir is None else InitBackbone.of(init_dir)
    with run.stage("train", stage_fingerprint(cfg, "train")) as details:
        # A new training never resumes an older one's checkpoints.
        shutil.rmtree(run.train_dir, ignore_errors=True)
        budget = None
        if record_budget:
            from ray_app.budget import compute_budget

            started = time.monotonic()
            budget = compute_budget(cfg, reader)
            run.train_dir.mkdir(parents=True)
            _write_json(run.train_dir / "budget.json", budget)
            details["budget"] = {
                "key": budget["key"], "cached": budget["cached"], "seconds": round(time.monotonic() - started, 3),
                "epoch_train_seconds": budget["estimate"]["epoch_train_seconds"],
                "flops_per_epoch": budget["flops"]["per_epoch"],
                "parameters": budget["parameters"]["total"], "trainable": budget["parameters"]["trainable"],
            }
        datasets = prepared if prepared is not None else prepare_training_data(cfg, reader)
        params = LoopParams(
            model=cfg.model,
            training=cfg.training,
            num_labels=len(label_names),
            train_rows=summary["splits"]["train"]["count"],
            seed=cfg.seed,
            metrics_dir=str(run.train_dir.resolve()),
            init_backbone=init_backbone,
            fail_at_epoch=_failure_injection(),
        )
        if init_backbone is not None:
            # The fingerprint holds the name, not the weights: record which weights,
            # since retraining the source run changes them under the same name.
            details["init_from"] = {
                "run": Path(init_backbone.model_dir).parent.parent.name,
                "model": init_backbone.model_dir,
                "weights_sha256": init_backbone.weights_sha256,
            }
        fit = fit_baseline(
            params, datasets, cfg.scaling, run.train_dir / "ray_storage", run.name, callbacks=train_callbacks
        )

        model = selected_model(
            fit.best_checkpoint, build_classifier(cfg.model, len(label_names)), cfg.training.ema.enabled
        )
        model_dir = run.train_dir / "model"
        save_classifier(
            model,
            cfg.model,
            label_names,
            model_dir,
            extra={
                "preprocessing": spec.to_dict(),
                "selected_epoch": fit.best_epoch,
                "run": run.name,
                "splits_fingerprint": summary["source_fingerprint"],
                "init_from": details.get("init_from"),
            },
        )
        predictions_dir = run.train_dir / "predictions"
        predictions_dir.mkdir(parents=True, exist_ok=True)
        outputs = predict_outputs(
            {s: reader.read(s, "predict") for s in ("val_calib", "val_test")},
            spec,
            model_dir,
            cfg.training.eval_batch_size,
            features=True,
            keep=("content_hash", "ref"),
        )
        calib = outputs["val_calib"]
        np.savez(predictions_dir / "val_calib.npz", logits=calib["logits"], labels=calib["labels"])
        save_val_test_predictions(outputs["val_test"], predictions_dir / "val_test.npz", model_dir)

        best_row = next(r for r in fit.history if r["epoch"] == fit.best_epoch)
        details.update(
            epochs_run=len(fit.history),
            best_epoch=fit.best_epoch,
            best={k: v for k, v in best_row.items() if k.startswith("val_select/")},
            resumed_at=fit.resumed_at,
            predictions={s: list(out["logits"].shape) for s, out in outputs.items()},
            reads={stage: sorted(splits) for stage, splits in reader.reads.items()},
        )
        if budget is not None:
            details["epoch_seconds"] = epoch_seconds(budget["estimate"]["epoch_train_seconds"], fit.history)
    return run.stage_info("train")


def save_val_test_predictions(out: dict[str, np.ndarray], path: Path, model_dir: Path) -> None:
    """val_test's logits and labels, with what the run's insights need beside them: the
    pooled features, a stable id per row and its content hash, and the sha256 of the
    weights that produced them. Rows are sorted by id, so the file does not depend on
    the order Ray Data returned them in."""
    from ray_app.insights.outcomes import unique_row_ids

    ids = unique_row_ids(out["content_hash"], out["labels"], out["ref"])
    order = np.argsort(ids, kind="stable")
    np.savez(
        path,
        logits=out["logits"][order],
        labels=out["labels"][order],
        features=out["features"][order],
        ids=ids[order],
        content_hashes=np.asarray(out["content_hash"], dtype=str)[order],
        model_sha256=np.array(file_sha256(model_dir / WEIGHTS_FILE)),
    )


def epoch_seconds(estimated: float, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The estimated epoch time beside the measured one (metrics' train/seconds: the
    training steps of an epoch). The first epoch streams from Ray Data and warms up,
    so the comparison uses the median of the later ones (the first when it is all)."""
    measured = [float(r["train/seconds"]) for r in history]
    later = measured[1:] or measured
    median = float(np.median(later)) if later else None
    return {
        "estimated": round(estimated, 4),
        "measured_median": None if median is None else round(median, 4),
        "measured_first": round(measured[0], 4) if measured else None,
        "ratio": None if not median or not estimated else round(median / estimated, 3),
    }


# --- calibrate --------------------------------------------------------------------------


def load_predictions(run: Run, split: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels a stage may read: the split contract applies to predictions
    exactly as to the split files they came from."""
    check_access(split, stage)
    path = run.train_dir / "predictions" / f"{split}.npz"
    if not path.is_file():
        raise UserError(
            f"run '{run.name}' has no {split} logits ({path}); train it first: "
            f"ray-app train <config>"
        )
    with np.load(path, allow_pickle=False) as saved:
        return saved["logits"], saved["labels"]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def run_calibration(cfg: AppConfig, run: Run) -> dict[str, Any]:
    """Temperature, threshold, guardrail (Ray Tune) and risk control on val_calib only;
    the configured rule becomes policy.json."""
    logits, labels = load_predictions(run, "val_calib", "calibrate")
    ccfg = cfg.calibration
    with run.stage("calibrate", stage_fingerprint(cfg, "calibrate")) as details:
        out = run.root / "calibration"
        tmp = run.root / "calibration.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            temperature = (
                fit_temperature(
                    logits, labels, ccfg.temperature.min_temperature,
                    ccfg.temperature.max_temperature, ccfg.temperature.min_samples,
                )
                if ccfg.temperature.enabled
                else 1.0
            )
        except CalibrationError as exc:
            raise UserError(f"calibration of run '{run.name}': {exc}") from None
        summary_before = calibration_summary(logits, labels, 1.0, ccfg.ece_bins)
        summary_after = calibration_summary(logits, labels, temperature, ccfg.ece_bins)
        results: dict[str, Any] = {
            "run": run.name,
            "n_calib": int(len(labels)),
            "temperature": {
                "enabled": ccfg.temperature.enabled, "temperature": temperature,
                "before": summary_before, "after": summary_after,
            },
        }
        _write_json(tmp / "temperature.json", results["temperature"])

        probs = probabilities(logits, temperature)
        preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
        correct = preds == labels
        candidates = candidate_thresholds(confidence, ccfg.threshold.num_candidates)
        sweep = sweep_thresholds(confidence, preds, labels, candidates, probs.shape[1])
        marks: dict[str, tuple[float, float]] = {}

        if ccfg.threshold.enabled:
            try:
                best = choose_threshold(sweep, ccfg.threshold.objective, ccfg.threshold.min_coverage)
            except CalibrationError as exc:
                raise UserError(f"threshold sweep: {exc}") from None
            results["threshold"] = {
                "objective": ccfg.threshold.objective,
                "min_coverage": ccfg.threshold.min_coverage,
                **{k: float(v[best]) for k, v in sweep.items()},
                "candidates": [{k: float(v[j]) for k, v in sweep.items()} for j in range(len(candidates))],
            }
            _write_json(tmp / "thresholds.json", results["threshold"])
            marks["threshold"] = (float(sweep["coverage"][best]), float(sweep["selective_risk"][best]))

        if ccfg.guardrail.enabled:
            g = ccfg.guardrail
            centers = g.centers if g.center_mode == "auto" else [g.center]
            init_ray(cfg)  # the only part of calibration that needs Ray
            best_band, trials = tune_guardrail(
                confidence, correct, centers, g.widths, g.max_assist_rate, g.min_coverage,
                run.root / "calibration_tune", g.max_concurrent_trials,
            )
            results["guardrail"] = {**best_band, "center_mode": g.center_mode, "trials": len(trials), "results": trials}
            _write_json(tmp / "guardrail.json", results["guardrail"])
            if best_band["accepted"]:
                marks["guardrail (accepted)"] = (best_band["coverage"], 1.0 - best_band["accepted_accuracy"])

        if ccfg.risk_control.enabled:
            r = ccfg.risk_control
            controlled = learn_then_test(confidence, correct, r.alpha, r.delta, r.min_accepted, r.num_candidates)
            results["risk_control"] = controlled.to_dict()
            _write_json(tmp / "risk_control.json", results["risk_control"])
            if controlled.qualified:
                marks["risk control"] = (controlled.calib_coverage or 0.0, controlled.calib_selective_risk or 0.0)

        policy = _policy_from(ccfg.policy, temperature, results)
        results["policy"] = policy.model_dump()
        (tmp / "policy.json").write_text(policy.model_dump_json(indent=2) + "\n")
        uncalibrated = probabilities(logits)
        views = calibration_views(
            uncalibrated=(uncalibrated.max(axis=1), uncalibrated.argmax(axis=1) == labels),
            calibrated=(confidence, correct),
            policy=policy,
            sweep=sweep,
            marks=marks,
            guardrail=results.get("guardrail"),
            n_bins=ccfg.ece_bins,
        )
        _write_json(tmp / "views.json", views)
        write_report(tmp, results, draw_views(views, tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        details.update(
            temperature=temperature,
            ece_before=summary_before["ece"],
            ece_after=summary_after["ece"],
            policy=policy.rule,
            reads=["val_calib"],
        )
    return run.stage_info("calibrate")


def _policy_from(rule: str, temperature: float, results: dict[str, Any]) -> Policy:
    if rule == "threshold":
        return Policy(temperature=temperature, rule="threshold", threshold=results["threshold"]["threshold"])
    if rule == "guardrail":
        band = results["guardrail"]
        if not band["feasible"]:
            raise UserError(
                "policy guardrail: no band met max_assist_rate and min_coverage on val_calib; "
                "relax calibration.guardrail.max_assist_rate / min_coverage or widen the grid"
            )
        return Policy(temperature=temperature, rule="guardrail", center=band["center"], width=band["width"])
    if rule == "risk_control":
        controlled = results["risk_control"]
        if not controlled["qualified"]:
            raise UserError(f"policy risk_control: {controlled['message']}")
        return Policy(
            temperature=temperature, rule="risk_control", threshold=controlled["threshold"],
            alpha=controlled["alpha"], delta=controlled["delta"],
        )
    return Policy(temperature=temperature, rule="none")


# --- evaluate ---------------------------------------------------------------------------


def run_evaluation(cfg: AppConfig, run: Run) -> dict[str, Any]:
    """Final metrics on val_test only, under the run's policy."""
    policy_path = run.root / "calibration" / "policy.json"
    if not policy_path.is_file():
        raise UserError(f"run '{run.name}' has no policy ({policy_path}); calibrate it first: ray-app calibrate {run.name}")
    policy = Policy.model_validate_json(policy_path.read_text())
    logits, labels = load_predictions(run, "val_test", "evaluate")
    label_names = SplitReader(run.splits_dir).summary()["label_names"]
    with run.stage("evaluate", stage_fingerprint(cfg, "evaluate")) as details:
        metrics = evaluate_under_policy(logits, labels, policy, label_names, cfg.calibration.ece_bins)
        (run.root / "eval").mkdir(exist_ok=True)
        _write_json(run.root / "eval" / "metrics.json", metrics)
        details.update(
            accuracy=metrics["accuracy"], ece=metrics["calibrated"]["ece"],
            coverage=metrics["policy"]["coverage"], accepted_accuracy=metrics["policy"]["accepted_accuracy"],
            reads=["val_test"],
        )
    return metrics


# --- insights ---------------------------------------------------------------------------


def run_insights(cfg: AppConfig, run: Run) -> dict[str, Any]:
    """What the model learned and where it fails, on val_test: the outcome of every row,
    the meaning map (PCA, cached; other projections on demand), the storyboard, and a
    linear reference model for comparison (`ray_app.insights`)."""
    from ray_app.insights.build import build_insights

    if not cfg.insights.enabled:
        with run.stage("insights", stage_fingerprint(cfg, "insights")) as details:
            shutil.rmtree(run.root / "insights", ignore_errors=True)
            details.update(disabled=True)
        return run.stage_info("insights")
    spec = resolve_input_spec(cfg)
    image_size = spec.image_size if isinstance(spec, ImageSpec) else None
    channels = spec.num_channels if isinstance(spec, ImageSpec) else 1
    description = f"{backbone_names(cfg)[1]} {cfg.training.mode}"
    with run.stage("insights", stage_fingerprint(cfg, "insights")) as details:
        details.update(build_insights(cfg, run, description, image_size, channels))
    return run.stage_info("insights")


# --- export -----------------------------------------------------------------------------


def run_export(cfg: AppConfig, run: Run) -> dict[str, Any]:
    """The selected model and the policy, sealed into runs/<name>/bundle/ and verified
    by loading it back."""
    model_dir = run.train_dir / "model"
    policy_path = run.root / "calibration" / "policy.json"
    if not model_dir.is_dir():
        raise UserError(f"run '{run.name}' has no trained model ({model_dir}); train it first")
    if not policy_path.is_file():
        raise UserError(f"run '{run.name}' has no policy ({policy_path}); calibrate it first: ray-app calibrate {run.name}")
    summary = SplitReader(run.splits_dir).summary()
    with run.stage("export", stage_fingerprint(cfg, "export")) as details:
        bundle_dir = export_bundle(
            model_dir,
            Policy.model_validate_json(policy_path.read_text()),
            run.root / "bundle",
            {
                "run": run.name,
                "splits_fingerprint": summary["source_fingerprint"],
                "config_fingerprint": stage_fingerprint(cfg, "export"),
                "versions": library_versions(),
            },
        )
        loaded = load_bundle(bundle_dir)  # proves it verifies and loads on its own
        details.update(bundle=str(bundle_dir), model_version=loaded.model_version,
                       files=len(loaded.manifest["files"]))
    return run.stage_info("export")


# --- everything -------------------------------------------------------------------------


def run_pipeline(cfg: AppConfig, run: Run, console: Console | None = None) -> dict[str, Any]:
    """Every stage in order. A stage complete for the same config is skipped, until one
    stage runs: everything after it then runs too (its inputs changed). `console`
    shows each stage (status, training progress, one line at its end)."""
    console = console or Console.silent()
    rerun = False
    reader: SplitReader | None = None
    total = len(STAGES)
    for number, stage in enumerate(STAGES, start=1):
        if not rerun and run.stage_complete(stage, stage_fingerprint(cfg, stage)):
            console.skipped(number, total, stage)
            continue
        rerun = True
        heading = training_heading(cfg) if stage == "train" else None
        with console.stage(number, total, stage, run, heading):
            if stage == "splits":
                reader = ensure_splits(cfg, run, force=True)
            elif stage == "train":
                reader = reader or ensure_splits(cfg, run)
                run_training(cfg, run, reader, record_budget=True)
            elif stage == "calibrate":
                run_calibration(cfg, run)
            elif stage == "evaluate":
                run_evaluation(cfg, run)
            elif stage == "insights":
                run_insights(cfg, run)
            else:
                run_export(cfg, run)
    return run.metadata()["stages"]


def training_heading(cfg: AppConfig) -> str:
    workers = cfg.scaling.num_workers
    device = "GPU" if cfg.scaling.use_gpu else "CPU"
    return (f"{cfg.training.mode}, up to {cfg.training.epochs} epochs on {workers} {device} "
            f"worker{'s' if workers > 1 else ''}")
