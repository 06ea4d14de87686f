"""A run with a review queue: a synthetic digits run (config, metadata, splits.json as
the splits stage writes it) whose served answers are recorded by the real
`serve.decisions.DecisionRecorder`, as a Serve replica records them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from calibration.policy import Policy
from ray_app.config import load_config
from ray_app.splits import plan_splits
from serve.config import DecisionRecording
from serve.decisions import DecisionRecorder, store_directory
from serve.predictor import PredictInput, Prediction
from tests.helpers.configs import SMOKE
from tests.helpers.runs import make_run

VERSION = "digits_run@0123456789ab"
OTHER_VERSION = "digits_run@ba9876543210"
DIGIT_LABELS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class Answered:
    """One recorded answer, as the test chose it."""

    request_id: str
    input_index: int
    confidence: float
    decision: str
    prediction: str
    pixels: np.ndarray  # 8x8, 0..255: the digit as a client sends it
    model_version: str = VERSION


def digits_run(runs: Path, name: str = "digits_run") -> Path:
    """A run of the smoke (sklearn_digits) config with splits.json written by
    `plan_splits`, so its classes are the digits' ten."""
    run = make_run(runs, name)
    cfg = load_config(SMOKE, [f"storage.root={runs}"])
    labels = [d for d in DIGIT_LABELS for _ in range(4)]
    plan = plan_splits([f"h{i}" for i in range(len(labels))], labels, cfg.data.splits, cfg.seed, cfg.data.source)
    (run / "splits").mkdir()
    (run / "splits" / "splits.json").write_text(plan.to_json())
    return run


def digit_pixels(index: int) -> np.ndarray:
    """A real digit of scikit-learn's set scaled to 0..255, as `encoded_digits` scales it."""
    return np.rint(load_digits().images[index] * (255.0 / 16.0))


def record(runs: Path, run: str, answers: list[Answered], audit_rate: float = 0.0) -> None:
    """Record `answers` as a Serve replica does (one request per request id), then
    close the recorder, which writes them. `audit_rate` 1.0 keeps every accepted
    answer's input (0.0, none: a test says which accepted answers it reviews)."""
    settings = DecisionRecording(flush_interval_s=60.0, retention_check_s=3600.0, audit_rate=audit_rate)
    recorder = DecisionRecorder(store_directory(runs, run), settings, "replica-0")
    by_request: dict[tuple[str, str], list[Answered]] = {}
    for answer in answers:
        by_request.setdefault((answer.model_version, answer.request_id), []).append(answer)
    for (version, request_id), group in by_request.items():
        group.sort(key=lambda a: a.input_index)
        predictions = [Prediction(label=a.prediction, label_id=int(a.prediction), confidence=a.confidence,
                                  decision=a.decision,  # type: ignore[arg-type]
                                  top_k=[{"label": a.prediction, "label_id": int(a.prediction), "probability": a.confidence},
                                         {"label": "9" if a.prediction != "9" else "8",
                                          "label_id": 9 if a.prediction != "9" else 8,
                                          "probability": 1 - a.confidence}]) for a in group]
        inputs = [PredictInput(pixels=a.pixels.tolist()) for a in group]
        prepared = [(a.pixels / 255.0).astype(np.float32)[None] for a in group]
        recorder.record(request_id, version, Policy(rule="guardrail", center=0.6, width=0.5), predictions, inputs,
                        prepared)
    recorder.close()


def answer_and_record(bundle_dir: Path, runs_root: Path, images: list[bytes], request_id: str,
                      recording: DecisionRecording | None = None) -> list[Prediction]:
    """The bundle's answers to `images` (PNG bytes), recorded where its Serve app would
    record them: a replica's path without the HTTP in front (prepare, the forward,
    the policy's answer, `DecisionRecorder.record`), so the dashboard's tests get a
    real model's answers without starting Serve. `recording`: the Serve app's
    defaults unless given."""
    import base64

    from serve.bundle import load_bundle
    from serve.decisions import default_directory_for_bundle
    from serve.predictor import BundlePredictor, PredictRequest

    import time

    bundle = load_bundle(bundle_dir)
    predictor = BundlePredictor(bundle, max_image_pixels=10**6)
    started = time.perf_counter()
    request = PredictRequest(inputs=[PredictInput(image=base64.b64encode(c).decode()) for c in images])
    prepared = predictor.prepare(request, max_inputs=len(images))
    logits = np.stack(predictor.logits_or_errors(prepared))  # type: ignore[arg-type]
    predictions = predictor.answer(logits, bundle.policy, top_k=3)
    recorder = DecisionRecorder(default_directory_for_bundle(bundle_dir, bundle.manifest), recording or DecisionRecording(),
                                f"test-{request_id}")
    recorder.record(request_id, bundle.model_version, bundle.policy, predictions, request.inputs, prepared,
                    latency_ms=1000 * (time.perf_counter() - started))
    recorder.close()
    return predictions
