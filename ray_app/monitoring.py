"""How a served model is doing, without labels: the recorded answers of a run's bundle
(`serve.decisions`) over a sliding window, against what the run's calibration promised
(`calibration.monitor`: drift, estimated accuracy, decision mix).

The reference comes from the run's own files: val_calib's confidence histogram from the
calibration views, the decision rates the policy gave on val_test from the evaluation,
and the ECE after temperature on val_calib. No split is read again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.monitor import DEFAULT_DRIFT_P, DEFAULT_DRIFT_PSI, ConfidenceReference, monitor_window
from ray_app.errors import NotReady
from ray_app.review import ReviewQueue
from ray_app.runs import Run
from serve.decision_store import DecisionStore
from serve.decisions import store_directory


def _json(path: Any, what: str, run: Run) -> dict[str, Any]:
    if not path.is_file():
        raise NotReady(f"run '{run.name}' has no {what} yet ({path}): it needs a calibrated, evaluated run "
                       f"(ray-app run <config>)")
    return json.loads(path.read_text())


def confidence_reference(run: Run) -> ConfidenceReference:
    """What the run's calibration promised (see the module)."""
    views = _json(run.calibration.views, "calibration views", run)
    evaluation = _json(run.evaluation, "val_test evaluation", run)
    temperature = _json(run.calibration.temperature, "temperature", run)
    policy = evaluation["policy"]
    promised = {"accept": policy["coverage"], "assist": policy["assist_rate"], "abstain": policy["abstain_rate"]}
    return ConfidenceReference.from_views(views, promised, temperature["after"]["ece"],
                                          evaluation["confusion_matrix"]["matrix"])


def served_versions(run: Run, store: DecisionStore) -> list[str]:
    """The model versions of this run that answered, newest bundle first when known."""
    versions = sorted(store.counts())
    current = bundle_version(run)
    return sorted(versions, key=lambda v: (v != current, v))


def bundle_version(run: Run) -> str | None:
    manifest = run.bundle_dir / "bundle.json"
    return json.loads(manifest.read_text()).get("model_version") if manifest.is_file() else None


def reviewed_correct(run: Run, runs_root: Any, model_version: str | None, since: float,
                     until: float) -> tuple[np.ndarray, np.ndarray]:
    """Whether each answer of the window that a person labelled was right (skips left
    out), in two groups: the assist and abstain answers, whose accuracy sits below the
    accepted answers' by design (it checks the band), and the audit sample of accepted
    answers, a random sample whose accuracy is the accepted answers' own."""
    reviews = [r for r in ReviewQueue(run, Path(runs_root)).reviews(model_version).values()
               if not r.skipped and since <= r.answered_at < until]
    band = np.array([r.label == r.prediction for r in reviews if r.decision != "accept"], dtype=bool)
    audited = np.array([r.label == r.prediction for r in reviews if r.decision == "accept"], dtype=bool)
    return band, audited


def monitor_run(run: Run, runs_root: Any, window_s: float, model_version: str | None = None,
                drift_psi: float = DEFAULT_DRIFT_PSI, drift_p: float = DEFAULT_DRIFT_P,
                now: float | None = None) -> dict[str, Any]:
    """The monitor of a run's served model over the last `window_s` seconds: the answers
    of `model_version` (default: the run's bundle, else the version that answered).
    Drift is flagged past `drift_psi` with its test rejecting at `drift_p`."""
    reference = confidence_reference(run)
    store = DecisionStore(store_directory(runs_root, run.name))
    versions = served_versions(run, store)
    version = model_version or (versions[0] if versions else bundle_version(run))
    until = time.time() if now is None else now
    answers = store.read(model_version=version, since=until - window_s, until=until, with_inputs=False)
    confidence = np.array([a.confidence for a in answers], dtype=np.float64)
    decisions = np.array([a.decision for a in answers], dtype=str)
    predictions = np.array([a.label_id for a in answers], dtype=np.int64)
    band, audited = reviewed_correct(run, runs_root, version, until - window_s, until)
    window = monitor_window(reference, confidence, decisions, predictions, window_s, drift_psi, drift_p,
                            reviewed_correct=band, audited_correct=audited)
    label_names = evaluation_labels(run)
    return {"run": run.name, "model_version": version, "versions": versions, "until": until,
            "label_names": label_names, "latency_ms": request_latency(answers), **window}


def request_latency(answers: list[Any]) -> dict[str, Any]:
    """Percentiles of the replicas' time to answer, per request (every input of a
    request shares its request's latency, so it counts once)."""
    per_request = {(a.writer, a.request_id, a.answered_at): a.latency_ms for a in answers if a.latency_ms is not None}
    values = np.array(list(per_request.values()), dtype=np.float64)
    if not len(values):
        return {"requests": 0, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"requests": int(len(values)), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def evaluation_labels(run: Run) -> list[str]:
    """The class names, in label-id order, as the evaluation recorded them."""
    return [str(name) for name in _json(run.evaluation, "val_test evaluation", run)["confusion_matrix"]["labels"]]
