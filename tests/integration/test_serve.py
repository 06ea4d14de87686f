"""The Serve app over real HTTP on loopback, serving the smoke run's bundle: answers
against the bundle itself, batching across callers, reconfigure without a restart,
the token, every answer recorded in the decision store (and what is still queued
written when a replica shuts down), and one test per kind of bad request (each a 4xx
with a JSON reason, and the server still answers afterwards)."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image

from calibration.policy import Policy
from serve.bundle import load_bundle
from serve.config import DecisionRecording, ServeConfig
from serve.decision_store import DecisionStore, RecordedAnswer
from serve.decisions import default_directory_for_bundle, in_audit_sample
from serve.predictor import BundlePredictor, PredictInput, PredictRequest
from tests.helpers.fuzz import fuzz

# One replica (the batching counters in /metadata are per replica) of one reserved CPU
# (the session's Ray is shared with training tests), with two torch threads set
# explicitly so the test sees the setting reach the replica.
LIMITS = {"max_inputs_per_request": 8, "max_body_bytes": 64 * 1024, "top_k": 2,
          "max_batch_size": 8, "max_ongoing_requests": 32, "batch_wait_timeout_s": 0.05,
          "num_replicas": 1, "num_cpus_per_replica": 1, "torch_threads": 2}


@pytest.fixture(scope="module")
def deploy_apps(ray_local, serve_port: int, smoke_bundle: Path):
    """Deploy apps serving the smoke bundle the way `ray-app serve` / `serve deploy` do
    (declaratively: the listed apps are the whole desired state)."""
    from ray_app.cli.serve import deploy

    def apps(**per_app: dict[str, Any]) -> None:
        configs = [ServeConfig(bundle=str(smoke_bundle), port=serve_port, app_name=name, route_prefix=f"/{name}", **settings)
                   for name, settings in per_app.items()]
        deploy(configs, f"http://{ray_local.dashboard_url}")

    return apps


@pytest.fixture(scope="module")
def endpoint(deploy_apps, serve_port: int) -> str:
    deploy_apps(smoke=LIMITS)
    return f"http://127.0.0.1:{serve_port}/smoke"


@pytest.fixture(scope="module")
def val_test_images(calibrated) -> tuple[list[bytes], np.ndarray]:
    _, run, _ = calibrated
    table = pq.read_table(run.splits_dir / "val_test").to_pydict()
    return [bytes(b) for b in table["image"][:6]], np.array(table["label_id"][:6])


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def pixels_of(content: bytes) -> list[list[float]]:
    return np.asarray(Image.open(io.BytesIO(content)), dtype=np.float64).tolist()


def test_predictions_are_the_bundle_under_its_policy(endpoint: str, smoke_bundle: Path, val_test_images) -> None:
    images, _ = val_test_images
    bundle = load_bundle(smoke_bundle)
    local = BundlePredictor(bundle, max_image_pixels=10**6)
    request = PredictRequest(inputs=[PredictInput(image=b64(c)) for c in images])
    expected_logits = local.logits(local.prepare(request, 8))
    expected = local.answer(expected_logits, bundle.policy, top_k=2)

    response = requests.post(f"{endpoint}/predict", json={"inputs": [{"image": b64(c)} for c in images]}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == bundle.model_version
    assert len(body["predictions"]) == len(images)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label_id"] == want.label_id and got["label"] == bundle.spec["label_names"][want.label_id]
        assert got["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert got["decision"] == want.decision
        assert [k["label_id"] for k in got["top_k"]] == [k.label_id for k in want.top_k] and len(got["top_k"]) == 2
        assert got["top_k"][0]["probability"] == pytest.approx(got["confidence"])
        assert got["top_k"][0]["probability"] >= got["top_k"][1]["probability"]

    # the same images as raw pixel arrays give the same answers (one preprocessing path)
    as_pixels = requests.post(f"{endpoint}/predict", json={"inputs": [{"pixels": pixels_of(c)} for c in images], "top_k": 1}, timeout=30)
    assert as_pixels.status_code == 200, as_pixels.text
    for got, want in zip(as_pixels.json()["predictions"], body["predictions"], strict=True):
        assert got["label_id"] == want["label_id"] and len(got["top_k"]) == 1
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_inputs_from_concurrent_callers_share_forward_passes(endpoint: str, val_test_images) -> None:
    images, _ = val_test_images
    before = requests.get(f"{endpoint}/metadata", timeout=10).json()["replica"]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(
            lambda i: requests.post(f"{endpoint}/predict", json={"inputs": [{"image": b64(images[i % 6])}]}, timeout=30).status_code,
            range(32),
        ))
    after = requests.get(f"{endpoint}/metadata", timeout=10).json()["replica"]
    assert codes == [200] * 32
    assert after["inputs"] - before["inputs"] == 32
    passes = after["forward_passes"] - before["forward_passes"]
    assert passes < 32, "every single-input request ran its own forward: no batching across callers"
    assert 1 < after["largest_batch"] <= LIMITS["max_batch_size"]


def test_multi_input_requests_from_concurrent_callers_keep_their_order(endpoint: str, smoke_bundle: Path,
                                                                       val_test_images) -> None:
    """Inputs of many requests are mixed into shared batches; every answer must still
    come back to its request, in the request's order."""
    images, _ = val_test_images
    bundle = load_bundle(smoke_bundle)
    local = BundlePredictor(bundle, max_image_pixels=10**6)
    logits = local.logits(local.prepare(PredictRequest(inputs=[PredictInput(image=b64(c)) for c in images]), 8))
    expected = local.answer(logits, bundle.policy, top_k=1)
    assert len({round(a.confidence, 4) for a in expected}) == len(images)  # each image recognisable by its answer
    orders = [[int(i) for i in np.random.default_rng(seed).permutation(len(images))] for seed in range(16)]
    before = requests.get(f"{endpoint}/metadata", timeout=10).json()["replica"]

    def ask(order: list[int]) -> list[dict[str, Any]]:
        payload = {"inputs": [{"image": b64(images[i])} for i in order], "top_k": 1}
        response = requests.post(f"{endpoint}/predict", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, orders))
    after = requests.get(f"{endpoint}/metadata", timeout=10).json()["replica"]
    assert after["forward_passes"] - before["forward_passes"] < len(orders), "no two requests shared a forward pass"
    for order, predictions in zip(orders, answers, strict=True):
        assert [p["label_id"] for p in predictions] == [expected[i].label_id for i in order]
        assert [p["confidence"] for p in predictions] == pytest.approx([expected[i].confidence for i in order], abs=1e-5)


def test_generated_requests_get_no_5xx_and_answers_match_the_schema(endpoint: str) -> None:
    """Schemathesis from the app's own OpenAPI schema: valid and invalid bodies for
    /predict (and the GET routes), each answered 2xx/4xx as documented."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{endpoint}/openapi.json")
    sent = fuzz(schema, 40, base_url=endpoint)
    print(f"serve fuzz: {sum(sent.values())} requests over {len(sent)} operations")
    assert "POST /predict" in sent and sent["POST /predict"] >= 20
    assert requests.get(f"{endpoint}/healthz", timeout=10).status_code == 200  # still serving


def test_healthz_metadata_and_openapi(endpoint: str, smoke_bundle: Path) -> None:
    bundle = load_bundle(smoke_bundle)
    health = requests.get(f"{endpoint}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": bundle.model_version}
    meta = requests.get(f"{endpoint}/metadata", timeout=10).json()
    assert meta["label_names"] == bundle.spec["label_names"]
    assert meta["input"] == {"kind": "image", "accepts": ["image", "pixels"], "image_size": 8, "num_channels": 1,
                             "mean": [0.5], "std": [0.5], "views": ["identity"], "view_crop_fraction": 0.875}
    assert meta["policy"] == bundle.policy.model_dump()
    assert meta["limits"]["max_inputs_per_request"] == 8 and meta["batching"]["max_batch_size"] == 8
    assert meta["splits_fingerprint"] == bundle.manifest["splits_fingerprint"] and not meta["token_required"]
    assert meta["replica"]["torch_threads"] == 2  # the setting reached the replica's torch
    assert meta["replica"]["device"] == "cpu" and meta["replica"]["precision"] == "fp32"
    schema = requests.get(f"{endpoint}/openapi.json", timeout=10).json()
    assert {"/predict", "/healthz", "/metadata"} <= set(schema["paths"])
    request_schema = schema["components"]["schemas"]["PredictRequest"]
    assert request_schema["properties"]["inputs"]["items"] == {"$ref": "#/components/schemas/PredictInput"}
    assert {"image", "pixels", "text"} <= set(schema["components"]["schemas"]["PredictInput"]["properties"])


def test_reconfigure_changes_decisions_without_a_restart(endpoint: str, deploy_apps, smoke_bundle: Path, val_test_images) -> None:
    images, _ = val_test_images
    payload = {"inputs": [{"image": b64(c)} for c in images]}
    before_meta = requests.get(f"{endpoint}/metadata", timeout=10).json()
    before = requests.post(f"{endpoint}/predict", json=payload, timeout=30).json()["predictions"]
    temperature = load_bundle(smoke_bundle).policy.temperature
    try:
        # accept nothing: every confidence is below a threshold of 1.0 minus a hair
        deploy_apps(smoke=LIMITS | {"policy": {"temperature": temperature, "rule": "threshold", "threshold": 0.999999}})
        after_meta = requests.get(f"{endpoint}/metadata", timeout=10).json()
        answered = requests.post(f"{endpoint}/predict", json=payload, timeout=30)
        assert answered.status_code == 200, answered.text  # answered on, through the reconfigure
        after = answered.json()["predictions"]
    finally:
        deploy_apps(smoke=LIMITS)
    assert after_meta["replica"]["id"] == before_meta["replica"]["id"]
    assert after_meta["replica"]["started_at"] == before_meta["replica"]["started_at"]
    assert after_meta["policy"]["rule"] == "threshold" and after_meta["policy"]["threshold"] == 0.999999
    assert [p["decision"] for p in after] == ["abstain" if p["confidence"] < 0.999999 else "accept" for p in after]
    assert [p["label_id"] for p in after] == [p["label_id"] for p in before]  # the model did not change
    assert [p["decision"] for p in after] != [p["decision"] for p in before]
    restored = requests.get(f"{endpoint}/metadata", timeout=10).json()
    assert restored["policy"] == before_meta["policy"] and restored["replica"]["id"] == before_meta["replica"]["id"]


AUDIT_RATE = DecisionRecording().audit_rate  # the Serve apps here record with the defaults


def recorded(store: DecisionStore, request_ids: set[str], expected_rows: int, timeout_s: float = 20.0
             ) -> list[RecordedAnswer]:
    """The store's answers to these requests, once all `expected_rows` are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in store.read() if r.request_id in request_ids]
        if len(rows) >= expected_rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_every_answer_is_recorded_with_its_decision_and_review_input(endpoint: str, deploy_apps, smoke_bundle: Path,
                                                                      val_test_images) -> None:
    """Answers land in the default store next to the run (<runs root>/decisions/<run>),
    as the caller got them; assist and abstain answers keep the input as it was sent."""
    images, _ = val_test_images
    bundle = load_bundle(smoke_bundle)
    local = BundlePredictor(bundle, max_image_pixels=10**6)
    logits = local.logits(local.prepare(PredictRequest(inputs=[PredictInput(image=b64(c)) for c in images]), 8))
    confidences = sorted(bundle.policy.calibrated(logits).max(axis=1).tolist())
    # a band holding the middle confidences: the least confident abstains, the most accepted
    low, high = (confidences[0] + confidences[1]) / 2, (confidences[-2] + confidences[-1]) / 2
    band = Policy(temperature=bundle.policy.temperature, rule="guardrail", center=(low + high) / 2, width=high - low)
    store = DecisionStore(default_directory_for_bundle(smoke_bundle, bundle.manifest))
    as_images, as_pixels = f"images-{uuid.uuid4().hex}", f"pixels-{uuid.uuid4().hex}"
    try:
        deploy_apps(smoke=LIMITS | {"policy": band.model_dump()})
        by_image = requests.post(f"{endpoint}/predict", json={"inputs": [{"image": b64(c)} for c in images]},
                                 headers={"x-request-id": as_images}, timeout=30)
        by_pixels = requests.post(f"{endpoint}/predict", json={"inputs": [{"pixels": pixels_of(c)} for c in images]},
                                  headers={"x-request-id": as_pixels}, timeout=30)
    finally:
        deploy_apps(smoke=LIMITS)
    assert by_image.status_code == 200 and by_pixels.status_code == 200, (by_image.text, by_pixels.text)
    assert by_image.headers["x-request-id"] == as_images  # the caller holds the key to its recorded answers
    answers = {as_images: by_image.json(), as_pixels: by_pixels.json()}
    assert {p["decision"] for p in answers[as_images]["predictions"]} == {"accept", "assist", "abstain"}

    rows = recorded(store, set(answers), 2 * len(images))
    assert len(rows) == 2 * len(images)
    for row in rows:
        sent = answers[row.request_id]
        prediction = sent["predictions"][row.input_index]
        assert row.model_version == sent["model_version"] == bundle.model_version
        assert (row.label, row.label_id, row.decision) == (prediction["label"], prediction["label_id"],
                                                           prediction["decision"])
        assert row.confidence == pytest.approx(prediction["confidence"], abs=1e-12)
        assert row.top_k == [(k["label_id"], k["label"], pytest.approx(k["probability"])) for k in prediction["top_k"]]
        assert Policy.model_validate(row.policy) == band  # the policy in force, after the reconfigure
        if row.decision == "accept" and not in_audit_sample(row.request_id, row.input_index, AUDIT_RATE):
            assert row.input is None  # accepted outside the audit sample: nothing for a person to see
        elif row.request_id == as_images:
            assert row.input_kind == "image" and row.input == images[row.input_index]
        else:
            assert row.input_kind == "pixels"
            np.testing.assert_array_equal(row.pixels(), np.asarray(pixels_of(images[row.input_index]), dtype=np.float32))
    stats = requests.get(f"{endpoint}/metadata", timeout=10).json()["decisions"]
    assert stats["enabled"] and stats["dropped"] == 0 and stats["failed"] == 0
    assert Path(stats["file"]).parent == store.directory and stats["recorded"] >= 2 * len(images)


def _rotate(content: bytes) -> bytes:
    """The same digit turned a quarter, as from a scanner fed sideways: inputs the model never saw."""
    image = Image.open(io.BytesIO(content))
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(image)))).save(out, format="PNG")
    return out.getvalue()


def test_the_monitor_flags_shifted_traffic_and_not_traffic_like_the_calibration_data(
    endpoint: str, smoke_bundle: Path, calibrated
) -> None:
    """Served answers, no labels: val_test digits look like val_calib (no drift, the
    estimated accuracy near the measured one); digits turned a quarter are flagged, by
    their confidences and by the classes predicted, and the estimate falls with them."""
    from ray_app.monitoring import monitor_run
    from ray_app.review import ReviewQueue

    _, run, metrics = calibrated
    images = [bytes(b) for b in pq.read_table(run.splits_dir / "val_test").to_pydict()["image"]]
    runs_root = smoke_bundle.parent.parent

    def send(batch: list[bytes]) -> tuple[float, float, set[str]]:
        started, ids = time.time(), set()
        for first in range(0, len(batch), LIMITS["max_inputs_per_request"]):
            chunk = batch[first:first + LIMITS["max_inputs_per_request"]]
            answer = requests.post(f"{endpoint}/predict", json={"inputs": [{"image": b64(c)} for c in chunk]}, timeout=30)
            assert answer.status_code == 200, answer.text
            ids.add(answer.headers["x-request-id"])
        return started, time.time(), ids

    steady_from, steady_to, steady_ids = send(images * 2)
    time.sleep(0.05)
    shifted_from, shifted_to, shifted_ids = send([_rotate(c) for c in images] * 2)
    store = DecisionStore(default_directory_for_bundle(smoke_bundle, load_bundle(smoke_bundle).manifest))
    rows = recorded(store, steady_ids | shifted_ids, 4 * len(images))
    assert len(rows) == 4 * len(images)
    # The accepted answers a hash put in the audit sample kept their inputs, and only they.
    audited = {(r.request_id, r.input_index) for r in rows if r.decision == "accept" and r.input is not None}
    assert audited == {(r.request_id, r.input_index) for r in rows
                       if r.decision == "accept" and in_audit_sample(r.request_id, r.input_index, AUDIT_RATE)}

    steady = monitor_run(run, runs_root, window_s=steady_to - steady_from + 0.01, now=steady_to + 0.01)
    shifted = monitor_run(run, runs_root, window_s=shifted_to - shifted_from + 0.01, now=shifted_to + 0.01)
    assert steady["answers"] == shifted["answers"] == 2 * len(images)
    assert steady["model_version"] == load_bundle(smoke_bundle).model_version
    assert not steady["drift"]["flagged"], steady["drift"]
    assert shifted["drift"]["by_confidence"] and shifted["drift"]["by_prediction"], shifted["drift"]
    assert shifted["drift"]["psi"] > steady["drift"]["psi"]
    # Less sure of inputs unlike its training data, the model accepts fewer and the
    # calibrated estimate of the accepted answers' accuracy falls (smoke model: 0.79 -> 0.73, accepting
    # 0.33 of the inputs instead of 0.58).
    assert shifted["decisions"]["accept"]["rate"] < steady["decisions"]["accept"]["rate"]
    assert shifted["estimated_accuracy"]["estimate"] < steady["estimated_accuracy"]["estimate"] - 0.02, (
        shifted["estimated_accuracy"], steady["estimated_accuracy"])
    # val_test is what the policy's promise was measured on: the live mix is that promise.
    for decision in ("accept", "assist", "abstain"):
        assert steady["decisions"][decision]["rate"] == pytest.approx(steady["decisions"][decision]["promised"], abs=0.03)
    estimate = steady["estimated_accuracy"]
    accepted_accuracy = metrics["policy"]["accepted_accuracy"]
    assert estimate["low"] - 0.1 <= accepted_accuracy <= estimate["high"] + 0.1, (estimate, accepted_accuracy)
    # Each request's latency counts once; the replica took some time to answer it.
    assert steady["latency_ms"]["requests"] == len(steady_ids) and 0 < steady["latency_ms"]["p50"] < 30_000
    # The assist answers of both windows wait for a person in the run's review queue.
    queue = ReviewQueue(run, runs_root).queue(("assist",), status="pending", limit=500)
    queued = [item for item in queue["items"] if steady_from <= item["answered_at"] <= shifted_to]
    assert len(queued) == steady["decisions"]["assist"]["count"] + shifted["decisions"]["assist"]["count"] > 0
    assert [item["confidence"] for item in queued] == sorted(item["confidence"] for item in queued)


def test_a_token_is_required_when_configured(endpoint: str, deploy_apps, serve_port: int, val_test_images,
                                             tmp_path: Path) -> None:
    """Also: removing an app shuts its replica down cleanly, and answers it still had
    queued (its flush interval is far longer than the test) are written then."""
    images, _ = val_test_images
    store = DecisionStore(tmp_path / "secure-decisions")
    deploy_apps(smoke=LIMITS, secure={"token": "s3cret-token", "num_replicas": 1,
                                      "decisions": {"directory": str(store.directory), "flush_interval_s": 60}})
    url = f"http://127.0.0.1:{serve_port}/secure"
    payload = {"inputs": [{"image": b64(images[0])}]}
    try:
        missing = requests.post(f"{url}/predict", json=payload, timeout=30)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"] == "unauthorized"
        wrong = requests.post(f"{url}/predict", json=payload, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        assert requests.get(f"{url}/metadata", timeout=10).status_code == 401
        right = requests.post(f"{url}/predict", json=payload, headers={"Authorization": "Bearer s3cret-token"}, timeout=30)
        assert right.status_code == 200 and len(right.json()["predictions"]) == 1
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes need no token
        assert store.read() == []  # answered, but still queued in the replica
    finally:
        deploy_apps(smoke=LIMITS)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 404  # the secure app is gone
    rows = recorded(store, {right.headers["x-request-id"]}, 1)
    assert len(rows) == 1, "the answer still queued when the replica shut down was not written"
    [row] = rows
    assert row.decision == right.json()["predictions"][0]["decision"]
    assert row.confidence == pytest.approx(right.json()["predictions"][0]["confidence"], abs=1e-12)
    assert requests.get(f"{endpoint}/healthz", timeout=10).status_code == 200


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


TRUNCATED_PNG = _png(np.arange(64, dtype=np.uint8).reshape(8, 8))[:50]


def _pixels(shape: tuple[int, ...], fill: float = 128.0) -> list[Any]:
    return np.full(shape, fill).tolist()


# (raw body, status, error, a phrase the reason must contain)
BAD_REQUESTS: dict[str, tuple[bytes, int, str, str]] = {
    "invalid_json": (b'{"inputs": [', 400, "invalid JSON", "not valid JSON"),
    "not_an_object": (b"[1, 2]", 422, "invalid request", "valid dictionary"),
    "wrong_field_type": (json.dumps({"inputs": [{"image": 42}]}).encode(), 422, "invalid request", "inputs.0.image"),
    "unknown_field": (json.dumps({"inputs": [{"picture": "x"}]}).encode(), 422, "invalid request", "inputs.0.picture"),
    "two_kinds_in_one_input": (json.dumps({"inputs": [{"text": "a", "pixels": _pixels((8, 8))}]}).encode(), 422,
                               "invalid request", "exactly one of image, pixels or text"),
    "empty_batch": (b'{"inputs": []}', 422, "invalid request", "at least 1 item"),
    "over_the_limit": (json.dumps({"inputs": [{"pixels": _pixels((8, 8))}] * 9}).encode(), 422, "invalid input",
                       "9 inputs, over the limit of 8"),
    "bad_base64": (b'{"inputs": [{"image": "not*base64!"}]}', 422, "invalid input", "inputs[0].image is not valid base64"),
    "base64_not_an_image": (json.dumps({"inputs": [{"image": b64(b"hello world")}]}).encode(), 422, "invalid input",
                            "not an image"),
    "wrong_size": (json.dumps({"inputs": [{"pixels": _pixels((7, 8))}]}).encode(), 422, "invalid input",
                   "has shape 7x8; this model takes 8x8x1 or 8x8"),
    "wrong_channels": (json.dumps({"inputs": [{"pixels": _pixels((8, 8, 3))}]}).encode(), 422, "invalid input",
                       "has shape 8x8x3"),
    "ragged_pixels": (json.dumps({"inputs": [{"pixels": [[1.0] * 8] * 7 + [[1.0] * 5]}]}).encode(), 422,
                      "invalid input", "ragged"),
    "nan_pixels": (json.dumps({"inputs": [{"pixels": _pixels((8, 8), float("nan"))}]}).encode(), 422, "invalid input",
                   "NaN or infinity"),
    "inf_pixels": (b'{"inputs": [{"pixels": ' + json.dumps([[1e999] * 8] * 8).encode() + b"}]}", 422, "invalid input",
                   "NaN or infinity"),
    "pixels_out_of_range": (json.dumps({"inputs": [{"pixels": _pixels((8, 8), 300.0)}]}).encode(), 422, "invalid input",
                            "expected 0..255"),
    "text_for_an_image_model": (b'{"inputs": [{"text": "a seven"}]}', 422, "invalid input",
                                "this model classifies images"),
    # a PNG whose header is intact but whose pixel data is cut off: it passes the check
    # made with the request and fails when its batch is decoded
    "truncated_image": (json.dumps({"inputs": [{"image": b64(TRUNCATED_PNG)}]}).encode(), 422, "invalid input",
                        "inputs[0].image could not be decoded"),
    "oversize_body": (json.dumps({"inputs": [{"image": "A" * 70_000}]}).encode(), 413, "request too large",
                      "over the limit of 65,536 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_reason_and_the_server_keeps_serving(endpoint: str, case: str, val_test_images) -> None:
    body, status, error, phrase = BAD_REQUESTS[case]
    response = requests.post(f"{endpoint}/predict", data=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == error
    assert phrase in json.dumps(answer["detail"]), answer
    good = requests.post(f"{endpoint}/predict", json={"inputs": [{"image": b64(val_test_images[0][0])}]}, timeout=30)
    assert good.status_code == 200


def test_oversize_chunked_body_is_refused(endpoint: str) -> None:
    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(20):
            yield b" " * 8192

    response = requests.post(f"{endpoint}/predict", data=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"] == "request too large"
