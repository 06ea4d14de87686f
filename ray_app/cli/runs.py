"""`ray-app runs list|show` and `ray-app logs RUN`: runs found by scanning the runs
root, and a run's log (the whole output of every command on it)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ray_app.errors import UserError


def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show"], help="list all runs, or show one")
    parser.add_argument("name", nargs="?", help="run name or directory (for show)")
    parser.add_argument("--root", default="./runs", help="runs root to scan (default ./runs)")


def cmd_runs(args: argparse.Namespace) -> int:
    from ray_app.console import run_detail_lines, runs_table_lines
    from ray_app.runs import find_runs, resolve_run

    root = Path(args.root)
    if args.action == "list":
        runs = find_runs(root)
        lines = runs_table_lines(runs) if runs else [f"no runs under {root}"]
    elif not args.name:
        raise UserError("runs show needs a run name: ray-app runs show <name>")
    else:
        lines = run_detail_lines(resolve_run(args.name, root), root)
    for line in lines:
        print(line)
    return 0


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run name or directory")
    parser.add_argument("--root", default="./runs", help="runs root to search for a run name (default ./runs)")
    parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    parser.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing new lines as the run writes them, until its command ends (or Ctrl-C)",
    )


def cmd_logs(args: argparse.Namespace) -> int:
    from ray_app.runlog import MAX_TAIL_LINES, is_end_line, read_from, tail_lines
    from ray_app.runs import resolve_run

    if args.tail is not None and not 0 < args.tail <= MAX_TAIL_LINES:
        raise UserError(f"--tail {args.tail}: give a number of lines from 1 to {MAX_TAIL_LINES}")
    run = resolve_run(args.run, Path(args.root))
    path = run.log_path
    if not path.is_file():
        raise UserError(f"run '{run.name}' has no log yet ({path}); it is written by ray-app run / train / "
                        "calibrate / evaluate / export on this run")
    if args.tail is not None:
        lines, offset = tail_lines(path, args.tail), path.stat().st_size
    else:
        lines, offset = read_from(path, 0)
    for line in lines:
        print(line)
    if not args.follow:
        return 0
    # Follow until the command that is writing ends (its `==== end` line), as
    # `ray job logs --follow` does for a job.
    ended = bool(lines) and is_end_line(lines[-1])
    while not ended:
        time.sleep(0.5)
        new, offset = read_from(path, offset)
        for line in new:
            print(line, flush=True)
            ended = is_end_line(line)
    return 0
