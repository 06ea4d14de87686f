"""The guardrail's loop on real data, end to end: a served model meets traffic that
drifted, the monitor says so without a label, a person labels what the policy sent them
and an audit sample of what it accepted, and the next run trains on those labels.

1. `ray-app run configs/digits.yaml` (the default), as a user runs it: run A.
2. A's bundle on Ray Serve (`ray_app.cli.serve.start_serving`, what `ray-app serve`
   runs), every answer recorded in its decision store, a share of the accepted ones
   with their input (decisions.audit_rate, --audit-rate). Traffic: the val_select
   digits as they are (a control window), then the train split's digits turned a
   quarter, as from a scanner fed sideways (the drift), in requests of 16.
3. A simulated person works the review queue (assist and abstain answers, then the
   audit sample, least confident first, up to --budget) with the true labels; the
   labels are exported (`review.export_reviewed`).
4. The monitor over each window (`ray_app.monitoring.monitor_run`): drift flags, the
   decision mix, the accuracy of accepted answers estimated from calibrated confidences,
   the audit sample's measured accuracy, and the accuracy they really had (the bench
   knows every input's label).
5. `ray-app run configs/digits.yaml -o data.reviewed=[the export]`: run B.
6. A and B on held-out digits, in-process through `serve.predictor.BundlePredictor`:
   val_test as it is and val_test turned a quarter (digits no reviewer saw), each with
   its policy's accept rate and the accuracy of what it accepted.

    python bench/review_loop.py --out bench/results/review_loop.json
    python bench/review_loop.py --audit-rate 0.25 --out bench/results/review_loop_audit25.json
    python bench/review_loop.py --seed 1 --out bench/results/review_loop_s1.json
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import run_case  # noqa: E402

PRESET = "configs/digits.yaml"
INPUTS_PER_REQUEST = 16
REVIEWER = "bench-reviewer"


def quarter_turn(png: bytes) -> bytes:
    """The digit turned a quarter (counter-clockwise), as a PNG again."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        turned = np.ascontiguousarray(np.rot90(np.asarray(image)))
    out = io.BytesIO()
    Image.fromarray(turned).save(out, format="PNG")
    return out.getvalue()


def split_rows(run: Any, split: str) -> tuple[list[bytes], list[str]]:
    """A split's image bytes and labels, as the splits stage wrote them."""
    import pyarrow.parquet as pq

    table = pq.read_table(run.splits_dir / split, columns=["image", "label"]).to_pydict()
    return [bytes(b) for b in table["image"]], [str(label) for label in table["label"]]


def send(url: str, images: list[bytes], prefix: str) -> tuple[float, float, dict[tuple[str, int], int]]:
    """POST the images in requests of INPUTS_PER_REQUEST, each with its own request id;
    the window's bounds and where each image went ((request id, input index) -> row)."""
    import requests

    started, where = time.time(), {}
    for first in range(0, len(images), INPUTS_PER_REQUEST):
        request_id = f"{prefix}-{first // INPUTS_PER_REQUEST}"
        chunk = images[first:first + INPUTS_PER_REQUEST]
        answer = requests.post(f"{url}/predict", headers={"x-request-id": request_id}, timeout=60,
                               json={"inputs": [{"image": base64.b64encode(c).decode()} for c in chunk]})
        answer.raise_for_status()
        for index in range(len(chunk)):
            where[(request_id, index)] = first + index
    return started, time.time() + 0.01, where


def serve_traffic(run: Any, windows: dict[str, tuple[list[bytes], list[str]]],
                  audit_rate: float) -> dict[str, tuple[float, float, dict[tuple[str, int], int]]]:
    """A's bundle on Ray Serve, recording with `audit_rate`, for the traffic windows:
    each window's bounds and where each of its inputs went."""
    import ray
    from ray import serve

    from ray_app.cli.serve import start_serving
    from ray_app.ray_runtime import free_port
    from serve.config import ServeConfig

    config = ServeConfig.model_validate({"bundle": str(run.bundle_dir), "port": free_port(),
                                         "decisions": {"audit_rate": audit_rate}})
    url = start_serving(config)
    sent = {}
    try:
        for name, (images, _) in windows.items():
            sent[name] = send(url, images, name)
            print(f"  sent {len(images)} {name} digits", flush=True)
    finally:
        serve.shutdown()  # the replicas flush their decisions on a clean shutdown
        ray.shutdown()
    return sent


def window_reports(run: Any, root: Path, sent: dict[str, Any], windows: dict[str, Any]) -> dict[str, Any]:
    """Each window's monitor (after the review: the audit sample's labels are in it)
    beside the truth about its accepted answers, which the bench alone knows."""
    from ray_app.monitoring import monitor_run
    from serve.bundle import load_bundle
    from serve.decision_store import DecisionStore
    from serve.decisions import default_directory_for_bundle

    bundle = load_bundle(run.bundle_dir)
    store = DecisionStore(default_directory_for_bundle(run.bundle_dir, bundle.manifest))
    report: dict[str, Any] = {}
    for name, (started, ended, where) in sent.items():
        labels = windows[name][1]
        monitor = monitor_run(run, root, window_s=ended - started, now=ended)
        answers = [a for a in store.read(model_version=bundle.model_version, since=started, until=ended,
                                         with_inputs=False) if (a.request_id, a.input_index) in where]
        right = np.array([a.label == labels[where[(a.request_id, a.input_index)]] for a in answers])
        accepted = np.array([a.decision == "accept" for a in answers])
        report[name] = {
            "answers": len(answers), "recorded_of_sent": f"{len(answers)}/{len(where)}",
            "drift": {k: monitor["drift"][k] for k in ("flagged", "by_confidence", "by_prediction", "psi",
                                                         "prediction_psi", "ks_p_value", "chi2_p_value")},
            "decisions": {d: monitor["decisions"][d]["rate"] for d in ("accept", "assist", "abstain")},
            "promised": {d: monitor["decisions"][d]["promised"] for d in ("accept", "assist", "abstain")},
            "estimated_accepted_accuracy": monitor["estimated_accuracy"],
            "audited_accepted_accuracy": monitor["audited_accuracy"],
            "measured_band_accuracy": monitor["measured_accuracy"],
            "true_accepted_accuracy": float(right[accepted].mean()) if accepted.any() else None,
            "true_accuracy": float(right.mean()),
        }
    return report


def review(run: Any, root: Path, sent: dict[str, Any], windows: dict[str, Any], budget: int) -> dict[str, Any]:
    """The simulated person: the queue's assist and abstain answers and the audit
    sample of accepted ones (both windows: a person sees one queue), least confident
    first, labelled with the truth up to `budget`; then the export. Upright digits the
    source holds are exported too and left out of training by the splits stage."""
    from ray_app.review import ReviewQueue, export_reviewed, item_id
    from serve.bundle import load_bundle

    version = load_bundle(run.bundle_dir).model_version
    truth = {}
    for name, (_, _, where) in sent.items():
        labels = windows[name][1]
        truth.update({item_id(version, request, index): labels[row] for (request, index), row in where.items()})
    queue = ReviewQueue(run, root)
    page = queue.queue(("assist", "abstain", "accept"), status="pending", limit=100_000)
    by_decision: dict[str, int] = {}
    for item in page["items"][:budget]:
        queue.label(item["id"], truth[item["id"]], reviewer=REVIEWER)
        by_decision[item["decision"]] = by_decision.get(item["decision"], 0) + 1
    exported = export_reviewed(run, root)
    return {"queue": page["counts"]["pending"], "labelled": sum(by_decision.values()), "by_decision": by_decision,
            "budget": budget, "export": {k: exported[k] for k in ("path", "rows", "fingerprint", "label_counts")}}


def held_out(run: Any, images: list[bytes], labels: list[str]) -> dict[str, Any]:
    """The run's bundle on held-out images: accuracy, accept rate, accepted accuracy."""
    from serve.bundle import load_bundle
    from serve.predictor import BundlePredictor, PredictInput, PredictRequest

    bundle = load_bundle(run.bundle_dir)
    predictor = BundlePredictor(bundle, max_image_pixels=10**6)
    request = PredictRequest(inputs=[PredictInput(image=base64.b64encode(c).decode()) for c in images])
    prepared = predictor.prepare(request, max_inputs=len(images))
    logits = np.stack(predictor.logits_or_errors(prepared))  # type: ignore[arg-type]
    answers = predictor.answer(logits, bundle.policy, top_k=1)
    right = np.array([a.label == label for a, label in zip(answers, labels, strict=True)])
    accepted = np.array([a.decision == "accept" for a in answers])
    return {"n": len(labels), "accuracy": float(right.mean()), "accept_rate": float(accepted.mean()),
            "accepted_accuracy": float(right[accepted].mean()) if accepted.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Where to write the JSON results.")
    parser.add_argument("--budget", type=int, default=10_000,
                        help="Most answers the simulated person labels (default: the whole queue).")
    parser.add_argument("--audit-rate", type=float, default=None,
                        help="decisions.audit_rate of the Serve app (default: its own default).")
    parser.add_argument("--seed", type=int, default=0,
                        help="The runs' seed (splits, initialisation, shuffling): repeat the loop on other seeds.")
    parser.add_argument("--work", type=Path, default=None,
                        help="An empty or new directory for the runs, their decisions and reviews (default: a new "
                        "temporary one). Never a used one: earlier answers and labels would join this loop's.")
    args = parser.parse_args()
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="ray_app_review_loop-"))
    elif args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} is not empty: give a new directory (earlier answers and labels would "
                     "join this loop's)")
    print(f"work directory: {args.work}", flush=True)
    from ray_app.runs import Run

    started = time.monotonic()
    print("run A: the default config ...", flush=True)
    seed = [f"seed={args.seed}"]
    before = run_case("A", PRESET, seed, args.work / "runs")
    run_a = Run.under(args.work / "runs", before["run"])
    select, select_labels = split_rows(run_a, "val_select")
    train, train_labels = split_rows(run_a, "train")
    windows = {"control": (select, select_labels), "drift": ([quarter_turn(c) for c in train], train_labels)}
    print("serving A: control traffic, then drifted traffic ...", flush=True)
    from serve.config import DecisionRecording

    audit_rate = DecisionRecording().audit_rate if args.audit_rate is None else args.audit_rate
    sent = serve_traffic(run_a, windows, audit_rate)
    reviewed = review(run_a, args.work / "runs", sent, windows, args.budget)
    traffic = window_reports(run_a, args.work / "runs", sent, windows)
    print(f"  the person labelled {reviewed['labelled']} of {reviewed['queue']} queued answers", flush=True)
    print("run B: the default config plus the export ...", flush=True)
    after = run_case("B", PRESET, [*seed, f"data.reviewed=[{reviewed['export']['path']}]"],
                     args.work / "runs_reviewed")
    run_b = Run.under(args.work / "runs_reviewed", after["run"])
    test, test_labels = split_rows(run_a, "val_test")
    turned = [quarter_turn(c) for c in test]
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "seed": args.seed, "audit_rate": audit_rate, "run_a": before, "traffic": traffic, "review": reviewed,
        "run_b": {**after, "splits_reviewed": run_b.stage_info("splits")["reviewed"]},
        "held_out": {
            "val_test": {"A": held_out(run_a, test, test_labels), "B": held_out(run_b, test, test_labels)},
            "val_test_turned": {"A": held_out(run_a, turned, test_labels), "B": held_out(run_b, turned, test_labels)},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for split, models in report["held_out"].items():
        print(f"{split}: A {models['A']['accuracy']:.3f} -> B {models['B']['accuracy']:.3f} "
              f"(accepting {models['A']['accept_rate']:.2f} -> {models['B']['accept_rate']:.2f})")


if __name__ == "__main__":
    main()
