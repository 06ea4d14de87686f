"""The commands that run the pipeline's stages: `run` (all of them), `splits`, `train`,
`calibrate`, `evaluate`, `insights`, `export`, and `budget` (before a run)."""

from __future__ import annotations

import argparse
import json

from ray_app.cli.arguments import add_config_arguments, load_context, load_target, run_console


def cmd_run(args: argparse.Namespace) -> int:
    ctx = load_context(args)
    from ray_app.console import run_summary_lines
    from ray_app.ray_runtime import init_ray
    from ray_app.stages import run_pipeline

    with run_console(ctx, args) as console:
        ctx.check()
        init_ray(ctx.cfg)
        ctx.run.record_launch()
        console.print(f"run {ctx.run.name} ({ctx.run.root}) · log {ctx.run.log_path}")
        run_pipeline(ctx)
        for line in run_summary_lines(ctx.run):
            console.print(line)
    return 0


def add_splits_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rewrite splits even if they match")


def cmd_splits(args: argparse.Namespace) -> int:
    ctx = load_context(args)
    from ray_app.console import splits_lines
    from ray_app.stages import SPLITS, run_pipeline

    with run_console(ctx, args) as console:
        run_pipeline(ctx, (SPLITS,), rerun_from=SPLITS.name if args.force else None)
        console.print(f"run {ctx.run.name}")
        for line in splits_lines(ctx.splits.summary(), ctx.splits.summary_path):
            console.print(line)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    ctx = load_context(args)
    from ray_app.console import training_lines
    from ray_app.ray_runtime import init_ray
    from ray_app.stages import SPLITS, TRAIN, run_pipeline

    with run_console(ctx, args) as console:
        ctx.check()
        init_ray(ctx.cfg)
        console.print(f"run {ctx.run.name} ({ctx.run.root})")
        run_pipeline(ctx, (SPLITS, TRAIN), rerun_from=TRAIN.name)
        for line in training_lines(ctx.run, ctx.run.stage_info(TRAIN.name)):
            console.print(line)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    ctx = load_target(args)
    from ray_app.console import calibration_lines
    from ray_app.stages import CALIBRATE, run_pipeline

    with run_console(ctx, args) as console:
        run_pipeline(ctx, (CALIBRATE,), rerun_from=CALIBRATE.name)
        # The run now holds a calibration made with this config (overrides included):
        # its config.yaml says so, so it describes what the run is.
        ctx.run.prepare(ctx.cfg)
        for line in calibration_lines(ctx.run, ctx.run.stage_info(CALIBRATE.name)):
            console.print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    ctx = load_target(args)
    from ray_app.console import evaluation_lines
    from ray_app.stages import EVALUATE

    with run_console(ctx, args) as console:
        EVALUATE.run(ctx)
        for line in evaluation_lines(ctx.run, json.loads(ctx.run.evaluation.read_text())):
            console.print(line)
    return 0


def cmd_insights(args: argparse.Namespace) -> int:
    ctx = load_target(args)
    from ray_app.console import insight_rows
    from ray_app.stages import INSIGHTS, run_pipeline

    with run_console(ctx, args) as console:
        run_pipeline(ctx, (INSIGHTS,), rerun_from=INSIGHTS.name)
        ctx.run.prepare(ctx.cfg)  # as for calibrate: config.yaml describes the insights made
        info = ctx.run.stage_info(INSIGHTS.name)
        if info.get("disabled"):
            console.print(f"run {ctx.run.name}: insights are off (insights.enabled: false)")
            return 0
        console.print(f"run {ctx.run.name}: insights on val_test ({info['n']} rows) in {info['seconds']:.1f}s")
        for label, value in insight_rows(ctx.run):
            console.print(f"  {label:<18} {value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ctx = load_target(args)
    from ray_app.stages import EXPORT

    with run_console(ctx, args) as console:
        info = EXPORT.run(ctx)
        console.print(f"run {ctx.run.name}: bundle {info['bundle']} ({info['files']} files, verified)")
        console.print(f"  model version {info['model_version']}")
    return 0


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the whole budget as JSON instead of a table")
    parser.add_argument("--refresh", action="store_true", help="measure again even when a cached budget matches")


def cmd_budget(args: argparse.Namespace) -> int:
    """The budget needs no run directory; what Ray and the benchmark print goes to the
    budget cache's log, so the console shows the table only."""
    ctx = load_context(args)
    from ray_app.budget import budget_lines, cached_budget, log_path
    from ray_app.stages import SPLITS

    budget = None if args.refresh else cached_budget(ctx.cfg)  # asked before: a file read, no torch, no Ray
    if budget is None:
        from ray_app.console import open_console

        with open_console(log_path(ctx.cfg), verbose=args.verbose, argv=args.argv) as console:
            from ray_app.budget import compute_budget

            _ = ctx.input_spec  # a backbone or tokenizer that cannot load: exit 2 before any work
            console.status("measuring the compute budget…")
            written = ctx.run.stage_complete(SPLITS.name, SPLITS.fingerprint(ctx.cfg))
            budget = compute_budget(ctx.cfg, ctx.splits if written else None, use_cache=False)
    if args.json:
        print(json.dumps(budget, indent=2, sort_keys=True))
    else:
        print(f"config {args.config} (run {ctx.run.name})")
        for line in budget_lines(budget):
            print(line)
        print(f"  {'cached in':<26} {budget['cache_file']}")
    return 0
