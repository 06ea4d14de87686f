"""`ray-app review list|export RUN`: a run's review queue (the answers its served model
sent to a person, least confident first) and the export of its labels as a dataset a
later run adds to its train split (`data.reviewed`). Labelling happens in the dashboard
or through PUT /api/v1/runs/{name}/review/items/{item}."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ray_app.errors import UserError

DECISION_CHOICES = ("assist", "abstain", "assist,abstain", "accept", "assist,abstain,accept")


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "export"],
                        help="list: the queue, least confident first; export: the labelled items as Parquet")
    parser.add_argument("run", help="run name or directory")
    parser.add_argument("--runs-root", "--root", dest="root", default="./runs",
                        help="runs root holding the run, its decisions/ and reviews/ (default ./runs)")
    parser.add_argument("--model-version", help="only this model version's answers (default: every version)")
    parser.add_argument("--decisions", choices=DECISION_CHOICES, default="assist",
                        help="list: which answers to review (default assist)")
    parser.add_argument("--status", choices=["pending", "labelled", "skipped", "all"], default="pending",
                        help="list: which items (default pending)")
    parser.add_argument("--limit", type=int, default=20, help="list: items shown (default 20)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON (as the API gives it)")


def cmd_review(args: argparse.Namespace) -> int:
    from ray_app.review import ReviewQueue, export_reviewed
    from ray_app.runs import resolve_run

    if not 1 <= args.limit <= 500:
        raise UserError(f"--limit {args.limit}: give a number of items from 1 to 500")
    run = resolve_run(args.run, Path(args.root))
    runs_root = run.root.parent  # where the run's Serve app records its answers (serve.decisions)
    if args.action == "export":
        record = export_reviewed(run, runs_root, args.model_version)
        if args.json:
            print(json.dumps(record, indent=2))
            return 0
        counts = ", ".join(f"{label} {n}" for label, n in record["label_counts"].items())
        print(f"exported {record['rows']} labelled item(s) of run '{run.name}' ({counts})")
        print(f"  {record['path']}")
        print(f"  sha256 {record['fingerprint']}")
        print(f"train on them: ray-app run {run.config_path} -o 'data.reviewed=[\"{record['path']}\"]' --on-exists new")
        return 0
    page = ReviewQueue(run, runs_root).queue(tuple(args.decisions.split(",")), args.model_version, args.status,
                                             args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    counts = page["counts"]
    print(f"run '{run.name}' review queue ({args.decisions}): {counts['pending']} pending, "
          f"{counts['labelled']} labelled, {counts['skipped']} skipped")
    if not page["items"]:
        print(f"no {args.status} items")
    for item in page["items"]:
        review = item["review"]
        verdict = "" if review is None else ("  skipped" if review["skipped"] else f"  -> {review['label']}")
        print(f"  {item['id']}  {item['confidence']:.3f}  {item['decision']:<7}  predicted {item['prediction']:<12} "
              f"{item['model_version']}{verdict}")
    return 0
