"""`ray-app sweep CONFIG --space SPACE`: Ray Tune over training hyperparameters."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ray_app.cli.arguments import add_config_arguments, load_context
from ray_app.errors import UserError


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--space",
        required=True,
        help="YAML of the search: config fields and their dimensions, trials, scheduler (see configs/sweeps/)",
    )
    parser.add_argument("--name", help="sweep name: <storage.root>/sweeps/<name>/ (default: the space file's name)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from ray_app.console import open_console
    from ray_app.ray_runtime import init_ray
    from ray_app.sweep import SweepLayout, load_sweep, run_sweep

    ctx = load_context(args)
    base_raw = ctx.cfg.resolved_dict()
    sweep = load_sweep(args.space, base_raw)
    name = args.name or Path(args.space).stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"--name '{name}': use letters, digits, '.', '_' and '-' only (it names a directory)")
    command = " ".join(
        ["ray-app sweep", args.config, "--space", args.space, *(f"-o {o}" for o in args.override)]
        + ([f"--name {args.name}"] if args.name else [])
    )
    layout = SweepLayout.for_config(ctx.cfg, name)
    with open_console(layout.log, verbose=args.verbose, ready=layout.root.is_dir, argv=args.argv) as console:
        ctx.check()
        init_ray(ctx.cfg)
        outcome = run_sweep(ctx.cfg, base_raw, sweep, name, command, echo=console.print)
        console.print(f"\nsweep {name}: {len(outcome.rows)} trial(s), best first ({layout.results_md})")
        console.print(outcome.table)
        console.print(f"\nbest config ({outcome.best_config}):")
        console.print(outcome.best_config.read_text().rstrip("\n"))
        console.print(f"\nnext: ray-app run {outcome.best_config}   (calibrates and exports run {outcome.best.run})")
    return 0
