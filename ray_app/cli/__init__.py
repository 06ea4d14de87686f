"""`ray-app` command line: one dispatch table, every command with an example.

Each handler is a few lines in a module of this package (`pipeline`: the stages and the
budget; `sweep`; `serve`; `runs`: runs and logs; `service`: the control plane, submit,
templates, families; `review`: the review queue and its export); what a command prints is formatted in `ray_app.console`. User
errors (config, data, arguments) print one clear message and exit 2 with no traceback;
anything else is a bug and keeps its traceback. Handlers import the heavy modules
lazily, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ray_app.cli import pipeline, review, runs, serve, service, sweep
from ray_app.cli.arguments import add_run_arguments, add_target_arguments
from ray_app.errors import UserError


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "run": Command(
        help="every stage in order: splits, train, calibrate, evaluate, insights, export (resumable)",
        example="ray-app run configs/digits.yaml -o training.epochs=5 --on-exists new",
        add_arguments=add_run_arguments,
        handler=pipeline.cmd_run,
    ),
    "splits": Command(
        help="read the dataset with Ray Data and write deterministic stratified splits",
        example="ray-app splits configs/digits.yaml -o seed=1",
        add_arguments=pipeline.add_splits_arguments,
        handler=pipeline.cmd_splits,
    ),
    "train": Command(
        help="train a classifier on Ray Train (makes the splits first if needed)",
        example="ray-app train configs/digits.yaml -o training.epochs=2 -o scaling.num_workers=2",
        add_arguments=add_run_arguments,
        handler=pipeline.cmd_train,
    ),
    "calibrate": Command(
        help="fit temperature, threshold, guardrail (Ray Tune) and risk control on val_calib",
        example="ray-app calibrate sklearn_digits_vit_baseline_lr0.002_s0 -o calibration.policy=risk_control",
        add_arguments=add_target_arguments,
        handler=pipeline.cmd_calibrate,
    ),
    "evaluate": Command(
        help="final metrics on val_test under the run's policy",
        example="ray-app evaluate configs/digits.yaml",
        add_arguments=add_target_arguments,
        handler=pipeline.cmd_evaluate,
    ),
    "insights": Command(
        help="on val_test: meaning map, storyboard, linear reference model (insights/report.md)",
        example="ray-app insights sklearn_digits_vit_baseline_lr0.002_s0 -o insights.max_points=2000",
        add_arguments=add_target_arguments,
        handler=pipeline.cmd_insights,
    ),
    "budget": Command(
        help="before a run: rows, tokens or patches per epoch, parameters, FLOPs, estimated epoch time (cached)",
        example="ray-app budget configs/digits.yaml -o training.batch_size=64",
        add_arguments=pipeline.add_budget_arguments,
        handler=pipeline.cmd_budget,
    ),
    "export": Command(
        help="seal the selected model and the policy into a verified bundle directory",
        example="ray-app export sklearn_digits_vit_baseline_lr0.002_s0",
        add_arguments=add_target_arguments,
        handler=pipeline.cmd_export,
    ),
    "sweep": Command(
        help="Ray Tune over training hyperparameters (ASHA); every trial a run; writes results and best.yaml",
        example="ray-app sweep configs/digits.yaml --space configs/sweeps/digits_lr.yaml",
        add_arguments=sweep.add_sweep_arguments,
        handler=sweep.cmd_sweep,
    ),
    "serve": Command(
        help="serve a bundle on Ray Serve: POST /predict, GET /healthz, /metadata (Ctrl-C stops)",
        example="ray-app serve runs/sklearn_digits_vit_baseline_lr0.002_s0/bundle --port 8000 -o max_batch_size=64",
        add_arguments=serve.add_serve_arguments,
        handler=serve.cmd_serve,
    ),
    "logs": Command(
        help="print a run's log: the whole output of every stage, driver and workers, kept across reruns",
        example="ray-app logs smoke_vit_baseline_s0 --tail 50  |  ray-app logs <run-name> --follow",
        add_arguments=runs.add_logs_arguments,
        handler=runs.cmd_logs,
    ),
    "server": Command(
        help="the control plane: launch runs as Ray jobs, follow their metrics and logs, templates, families",
        example="ray-app server --port 8080  |  ray-app server --ray-address http://head:8265 --runs-root /mnt/shared/runs",
        add_arguments=service.add_server_arguments,
        handler=service.cmd_server,
    ),
    "submit": Command(
        help="launch a run through the control plane (a Ray job); prints the run and the job id",
        example="ray-app submit configs/digits.yaml -o training.lr=0.001",
        add_arguments=service.add_submit_arguments,
        handler=service.cmd_submit,
    ),
    "templates": Command(
        help="named, described configs kept as YAML next to the runs root: list, show, save, suggest, delete",
        example="ray-app templates save configs/digits.yaml  |  ray-app templates list  |  ray-app templates show <name>",
        add_arguments=service.add_templates_arguments,
        handler=service.cmd_templates,
    ),
    "families": Command(
        help="the model families a config can train, and each one's parameters with defaults",
        example="ray-app families list  |  ray-app families show vit",
        add_arguments=service.add_families_arguments,
        handler=service.cmd_families,
    ),
    "review": Command(
        help="a run's review queue (answers its served model sent to a person) and the export of their labels",
        example="ray-app review list <run-name> --status all  |  ray-app review export <run-name> --runs-root ./runs",
        add_arguments=review.add_review_arguments,
        handler=review.cmd_review,
    ),
    "runs": Command(
        help="list runs or show one (found by scanning the runs root)",
        example="ray-app runs list  |  ray-app runs show <run-name>",
        add_arguments=runs.add_runs_arguments,
        handler=runs.cmd_runs,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-app",
        description="Train, calibrate and serve Hugging Face classifiers on Ray.",
        epilog="example: ray-app train configs/digits.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        child = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=f"example: {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given, for the head of the run's log
    try:
        return COMMANDS[args.command].handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
