"""The decision store on its own (no Ray): answers of a real tiny image bundle written in
batches by the real recorder thread, read back across replica files, retention by age
and size, a crashed writer's lost and torn tail, and recording switched off."""

from __future__ import annotations

import base64
import io
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from calibration.policy import Policy
from serve.bundle import export_bundle, load_bundle
from serve.config import DecisionRecording, ServeConfig
from serve.decision_store import DecisionStore
from serve.decisions import (
    DecisionRecorder,
    default_directory_for_bundle,
    in_audit_sample,
    open_recorder,
    store_directory,
    store_files,
    writer_file,
)
from serve.predictor import BundlePredictor, PredictInput, Prediction, PredictRequest
from tests.helpers.configs import REPO
from tests.helpers.models import model_cfg, png
from trainers.model import build_classifier, save_classifier
from trainers.preprocess import ImageSpec

# Only close() or a direct flush() writes: what a test sees on disk is what it flushed.
NEVER = {"flush_interval_s": 60.0, "retention_check_s": 3600.0}


@pytest.fixture(scope="module")
def image_predictor(tmp_path_factory: pytest.TempPathFactory) -> BundlePredictor:
    import torch

    directory = tmp_path_factory.mktemp("bundle")
    cfg = model_cfg()
    torch.manual_seed(0)
    save_classifier(build_classifier(cfg, 3).eval(), cfg, ["a", "b", "c"], directory / "model",
                    extra={"preprocessing": ImageSpec(8, 1, (0.5,), (0.5,)).to_dict()})
    bundle = export_bundle(directory / "model", Policy(rule="none"), directory / "bundle", {"run": "tiny"})
    return BundlePredictor(load_bundle(bundle), 10**6)


def images(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(count)]


def band_policy(confidences: list[float]) -> Policy:
    """A guardrail whose band holds the middle confidences: the lowest abstain, the
    highest accept, the rest assist."""
    ordered = sorted(confidences)
    low, high = (ordered[0] + ordered[1]) / 2, (ordered[-2] + ordered[-1]) / 2
    return Policy(rule="guardrail", center=(low + high) / 2, width=high - low)


def answered(predictor: BundlePredictor, request: PredictRequest, policy: Policy | None = None):
    prepared = predictor.prepare(request, 64)
    logits = predictor.logits(prepared)
    if policy is None:
        policy = band_policy([float(c) for c in Policy(rule="none").calibrated(logits).max(axis=1)])
    return policy, prepared, predictor.answer(logits, policy, top_k=2)


def plain_answers(confidences: list[float], decision: str = "accept") -> list[Prediction]:
    """Answers of a two-class model, for tests about rows rather than their content."""
    return [Prediction(label="a", label_id=0, confidence=c, decision=decision,  # type: ignore[arg-type]
                       top_k=[{"label": "a", "label_id": 0, "probability": c},
                              {"label": "b", "label_id": 1, "probability": 1 - c}]) for c in confidences]


def record_texts(recorder: DecisionRecorder, request_id: str, confidences: list[float], decision: str = "assist",
                 version: str = "m@1") -> None:
    texts = [f"{request_id} text {i}" for i in range(len(confidences))]
    recorder.record(request_id, version, Policy(rule="none"), plain_answers(confidences, decision),
                    [PredictInput(text=t) for t in texts], texts)


def test_answers_are_queued_then_written_in_one_batch_with_review_inputs(image_predictor: BundlePredictor,
                                                                          tmp_path: Path) -> None:
    pictures = images(6)
    pixel_rows = np.asarray(Image.open(io.BytesIO(pictures[5])), dtype=np.float64)
    request = PredictRequest(inputs=[PredictInput(image=base64.b64encode(p).decode()) for p in pictures[:5]]
                             + [PredictInput(pixels=pixel_rows.tolist())])
    policy, prepared, predictions = answered(image_predictor, request)
    assert {p.decision for p in predictions} == {"accept", "assist", "abstain"}

    recorder = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="r1")
    store = DecisionStore(tmp_path)
    try:
        started = time.time()
        recorder.record("req-1", "tiny@abc", policy, predictions, request.inputs, prepared, latency_ms=12.5)
        recorder.record("req-2", "tiny@abc", policy, predictions[:2], request.inputs[:2], prepared[:2])
        assert store.read() == []  # queued only: nothing written on the request path
        assert recorder.flush() == 8 and recorder.flushes == 1  # both requests, one transaction
    finally:
        recorder.close()
    rows = store.read(model_version="tiny@abc")
    assert [(r.request_id, r.input_index) for r in rows] == [("req-1", i) for i in range(6)] + [("req-2", 0), ("req-2", 1)]
    assert [r.latency_ms for r in rows] == [12.5] * 6 + [None, None]  # the request's, on each of its answers
    for row, prediction, index in zip(rows, predictions, range(6), strict=False):
        assert started <= row.answered_at <= time.time()
        assert (row.label, row.label_id, row.decision) == (prediction.label, prediction.label_id, prediction.decision)
        assert row.confidence == prediction.confidence
        assert row.top_k == [(k.label_id, k.label, k.probability) for k in prediction.top_k]
        assert Policy.model_validate(row.policy) == policy
        if prediction.decision == "accept":
            assert row.input is None and row.input_kind is None
        elif index < 5:
            assert row.input_kind == "image" and row.input == pictures[index]  # the file as sent
        else:
            assert row.input_kind == "pixels"
            np.testing.assert_array_equal(row.pixels(), pixel_rows.astype(np.float32))
    assert store.counts() == {"tiny@abc": {d: sum(r.decision == d for r in rows) for d in ("accept", "assist", "abstain")}}


def test_abstain_inputs_are_dropped_when_not_kept(tmp_path: Path) -> None:
    recorder = DecisionRecorder(tmp_path, DecisionRecording(keep_abstain_inputs=False, **NEVER), replica="r")
    record_texts(recorder, "abstained", [0.4], decision="abstain")
    record_texts(recorder, "assisted", [0.6], decision="assist")
    recorder.close()
    by_request = {r.request_id: r for r in DecisionStore(tmp_path).read()}
    assert by_request["abstained"].input is None and by_request["abstained"].decision == "abstain"
    assert by_request["assisted"].input == "assisted text 0" and by_request["assisted"].input_kind == "text"


def test_the_audit_sample_keeps_the_inputs_of_a_hashed_share_of_accepted_answers(tmp_path: Path) -> None:
    recorder = DecisionRecorder(tmp_path, DecisionRecording(audit_rate=0.25, **NEVER), replica="r")
    for i in range(400):
        record_texts(recorder, f"req-{i}", [0.95, 0.97], decision="accept")
    record_texts(recorder, "assisted", [0.6], decision="assist")
    recorder.close()
    rows = DecisionStore(tmp_path).read()
    kept = {(r.request_id, r.input_index) for r in rows if r.decision == "accept" and r.input is not None}
    assert kept == {(f"req-{i}", j) for i in range(400) for j in range(2) if in_audit_sample(f"req-{i}", j, 0.25)}
    assert 160 <= len(kept) <= 240  # a quarter of 800, within ±5 standard deviations (12)
    assert all(r.input == f"{r.request_id} text {r.input_index}" for r in rows if r.input is not None)
    assert next(r for r in rows if r.request_id == "assisted").input == "assisted text 0"
    audit = DecisionStore(tmp_path).read(decisions=("accept",), accepted_with_input_only=True, with_inputs=False)
    assert {(r.request_id, r.input_index) for r in audit} == kept
    assert in_audit_sample("req-1", 0, 0.0) is False and in_audit_sample("req-1", 0, 1.0) is True
    assert [in_audit_sample("x", i, 0.5) for i in range(20)] == [in_audit_sample("x", i, 0.5) for i in range(20)]


def test_the_thread_flushes_every_interval_and_close_writes_the_rest(tmp_path: Path) -> None:
    recorder = DecisionRecorder(tmp_path, DecisionRecording(flush_interval_s=0.2), replica="r")
    store = DecisionStore(tmp_path)
    record_texts(recorder, "first", [0.5, 0.6])
    deadline = time.monotonic() + 5
    while not store.read() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.request_id for r in store.read()] == ["first", "first"]  # the background flush, no call of ours
    slow = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="slow")
    record_texts(slow, "at-shutdown", [0.7])
    assert not any(r.request_id == "at-shutdown" for r in store.read())
    slow.close()  # what the deployment's __del__ calls on a graceful shutdown
    slow.close()  # idempotent: Serve's hook and garbage collection may both call it
    recorder.close()
    assert sorted(r.request_id for r in store.read()) == ["at-shutdown", "first", "first"]
    record_texts(slow, "after-close", [0.9])
    assert slow.dropped == 1 and slow.stats()["recorded"] == 1


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    recorder = DecisionRecorder(tmp_path, DecisionRecording(max_queued_requests=2, **NEVER), replica="r")
    for i in range(4):
        record_texts(recorder, f"q{i}", [0.5, 0.5])
    recorder.close()
    assert recorder.dropped == 4 and recorder.recorded == 4
    assert sorted({r.request_id for r in DecisionStore(tmp_path).read()}) == ["q0", "q1"]


def test_the_reader_unions_every_replica_file_and_filters(tmp_path: Path) -> None:
    one = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="one")
    two = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="two")
    record_texts(one, "a", [0.9], decision="accept")
    time.sleep(0.01)
    record_texts(two, "b", [0.5], decision="assist")
    time.sleep(0.01)
    middle = time.time()
    record_texts(one, "c", [0.3], decision="abstain", version="m@2")
    time.sleep(0.01)
    record_texts(two, "d", [0.6], decision="assist")
    one.close()
    two.close()
    assert len(store_files(tmp_path)) == 2
    store = DecisionStore(tmp_path)
    rows = store.read()
    assert [r.request_id for r in rows] == ["a", "b", "c", "d"]  # merged by time across the files
    assert {r.writer for r in rows} == {one.path.stem, two.path.stem}
    assert [r.request_id for r in store.read(decisions=("assist", "abstain"))] == ["b", "c", "d"]
    assert [r.request_id for r in store.read(decisions="assist", order_by="confidence")] == ["b", "d"]
    assert [r.request_id for r in store.read(order_by="confidence", limit=2)] == ["c", "b"]  # least confident first
    assert [r.request_id for r in store.read(since=middle)] == ["c", "d"]
    assert [r.request_id for r in store.read(until=middle)] == ["a", "b"]
    assert [r.request_id for r in store.read(model_version="m@2")] == ["c"]
    assert all(r.input is None for r in store.read(with_inputs=False))
    assert store.counts() == {"m@1": {"accept": 1, "assist": 2, "abstain": 0},
                              "m@2": {"accept": 0, "assist": 0, "abstain": 1}}
    with pytest.raises(ValueError, match=r"decisions must be some of \['accept', 'assist', 'abstain'\] \(got \['maybe'\]\)"):
        store.read(decisions=["maybe"])
    with pytest.raises(ValueError, match="order_by must be 'answered_at' or 'confidence'"):
        store.read(order_by="label")  # type: ignore[arg-type]
    assert DecisionStore(tmp_path / "nothing-yet").read() == []


def test_retention_deletes_answers_past_the_age_limit(tmp_path: Path) -> None:
    settings = DecisionRecording(max_age_days=1.0 / 86400, retention_check_s=0.0, flush_interval_s=60.0)
    recorder = DecisionRecorder(tmp_path, settings, replica="r")
    other = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="other")
    record_texts(recorder, "old", [0.5] * 3)
    record_texts(other, "old-elsewhere", [0.5])
    recorder.flush()
    other.flush()
    time.sleep(1.2)
    record_texts(recorder, "new", [0.5])
    recorder.flush()  # the retention check of this flush runs over both writers' files
    assert [r.request_id for r in DecisionStore(tmp_path).read()] == ["new"]
    other.close()
    recorder.close()


def test_retention_keeps_the_store_under_its_size_oldest_first(tmp_path: Path) -> None:
    settings = DecisionRecording(max_size_mb=0.25, retention_check_s=0.0, flush_interval_s=60.0)
    recorder = DecisionRecorder(tmp_path, settings, replica="r")
    other = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="other")
    filler = "x" * 2000  # a long text kept for review: ~2 kB a row
    for i in range(60):  # ~120 kB in the other writer's file, the oldest answers
        other.record(f"o{i:03d}", "m@1", Policy(rule="none"), plain_answers([0.5], "assist"),
                     [PredictInput(text=filler)], [filler])
    other.flush()
    for batch in range(10):  # ~200 kB more: over 0.25 MB after a few batches
        for i in range(10):
            recorder.record(f"r{batch}{i}", "m@1", Policy(rule="none"), plain_answers([0.5], "assist"),
                            [PredictInput(text=filler)], [filler])
        recorder.flush()
    total = sum(p.stat().st_size + (p.with_name(p.name + "-wal").stat().st_size
                                    if p.with_name(p.name + "-wal").exists() else 0) for p in store_files(tmp_path))
    assert total <= 0.25 * 2**20
    kept = [r.request_id for r in DecisionStore(tmp_path).read()]
    assert "r99" in kept and "o000" not in kept  # the newest stay, the oldest went first
    everything = [f"o{i:03d}" for i in range(60)] + [f"r{b}{i}" for b in range(10) for i in range(10)]
    assert kept == everything[len(everything) - len(kept):]  # exactly a tail: no gap in time
    other.close()
    recorder.close()


def test_a_stale_empty_file_of_a_gone_writer_is_removed(tmp_path: Path) -> None:
    gone = DecisionRecorder(tmp_path, DecisionRecording(**NEVER), replica="gone")
    gone.close()
    old = time.time() - 7200
    os.utime(gone.path, (old, old))
    recorder = DecisionRecorder(tmp_path, DecisionRecording(retention_check_s=0.0, flush_interval_s=60.0), replica="r")
    record_texts(recorder, "x", [0.5])
    recorder.flush()
    assert store_files(tmp_path) == [recorder.path]
    recorder.close()


CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from calibration.policy import Policy
    from serve.config import DecisionRecording
    from serve.decisions import DecisionRecorder
    from serve.predictor import PredictInput, Prediction

    def answers(n):
        return [Prediction(label="a", label_id=0, confidence=0.5, decision="assist",
                           top_k=[{{"label": "a", "label_id": 0, "probability": 0.5}}]) for _ in range(n)]

    recorder = DecisionRecorder(Path({directory!r}), DecisionRecording(flush_interval_s=60, retention_check_s=3600),
                                replica="crashing")
    for batch in ("one", "two", "three"):
        texts = [batch * 500] * 20
        recorder.record(batch, "m@1", Policy(rule="none"), answers(20), [PredictInput(text=t) for t in texts], texts)
        if batch != "three":
            recorder.flush()
    os._exit(9)  # killed: batch three was queued, never flushed; nothing checkpointed or closed
""")


def test_a_crashed_writer_loses_only_its_unflushed_tail_and_a_torn_tail_is_ignored(tmp_path: Path,
                                                                                  caplog: pytest.LogCaptureFixture) -> None:
    crashed = tmp_path / "crashed"
    result = subprocess.run([sys.executable, "-c", CRASHING_WRITER.format(repo=str(REPO), directory=str(crashed))],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    [path] = store_files(crashed)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0  # both batches still only in the write-ahead log

    # a copy whose log lost its last bytes (a torn write): batch two's commit frame is gone
    torn = tmp_path / "torn"
    torn.mkdir()
    for part in (path, wal):
        (torn / part.name).write_bytes(part.read_bytes())
    with open(torn / wal.name, "r+b") as log:
        log.truncate(wal.stat().st_size - 100)

    assert {r.request_id for r in DecisionStore(crashed).read()} == {"one", "two"}  # three was never flushed
    assert len(DecisionStore(crashed).read()) == 40
    torn_rows = DecisionStore(torn).read()
    assert {r.request_id for r in torn_rows} == {"one"} and len(torn_rows) == 20  # all of batch one, none of two

    # a writer that died before its first commit, and a file that is not SQLite at all
    (crashed / "empty.sqlite").write_bytes(b"")
    (crashed / "garbage.sqlite").write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="serve.decision_store"):
        assert len(DecisionStore(crashed).read()) == 40
    assert "garbage.sqlite" in caplog.text and "not a readable decisions file" in caplog.text


def test_recording_off_creates_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "decisions" / "run"
    assert open_recorder(DecisionRecording(enabled=False), directory, replica="r") is None
    assert not (tmp_path / "decisions").exists()
    recorder = open_recorder(DecisionRecording(**NEVER), directory, replica="r")
    assert recorder is not None and recorder.path.parent == directory
    recorder.close()
    elsewhere = tmp_path / "chosen"
    chosen = open_recorder(DecisionRecording(directory=str(elsewhere), **NEVER), directory, replica="r")
    assert chosen is not None and chosen.path.parent == elsewhere
    chosen.close()


def test_where_the_store_goes_and_its_settings(tmp_path: Path) -> None:
    bundle = tmp_path / "runs" / "digits_vit" / "bundle"
    assert default_directory_for_bundle(bundle, {"run": "digits_vit"}) == tmp_path / "runs" / "decisions" / "digits_vit"
    assert store_directory(tmp_path, "a/../b") == tmp_path / "decisions" / "b"
    with pytest.raises(ValueError, match="'..' is not a run name"):
        store_directory(tmp_path, "..")
    with pytest.raises(ValidationError, match="flush_interval_s"):
        ServeConfig(bundle="b", decisions={"flush_interval_s": 0})
    with pytest.raises(ValidationError, match="max_size_mb"):
        ServeConfig(bundle="b", decisions={"max_size_mb": -1})
    with pytest.raises(ValidationError, match="decisions.keep_inputs"):
        ServeConfig(bundle="b", decisions={"keep_inputs": True})
    assert ServeConfig(bundle="b").decisions.enabled
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError, match="cannot create the decisions directory .* set decisions.directory"):
        DecisionRecorder(blocked / "sub", DecisionRecording(**NEVER), replica="r")
    writer_file(tmp_path / "taken", "x").mkdir(parents=True)  # a directory where the writer's file goes
    with pytest.raises(OSError, match=f"cannot write the decisions file '{writer_file(tmp_path / 'taken', 'x')}'"):
        DecisionRecorder(tmp_path / "taken", DecisionRecording(**NEVER), replica="x")
