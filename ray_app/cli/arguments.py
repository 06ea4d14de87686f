"""What the commands share: their common arguments, loading a config (or a run) with
every local path checked before anything heavy is imported, and the console that keeps
a command's whole output in its run's log."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports the heavy modules lazily: --help and config errors stay fast
    from ray_app.console import Console
    from ray_app.stages.context import StageContext


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted path (repeatable), e.g. -o training.epochs=2",
    )


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything on the console too (Ray's own output, worker logs); by default it goes "
        "to the run's log only (runs/<name>/logs/run.log, see `ray-app logs`)",
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    add_override_argument(parser)
    add_verbose_argument(parser)


def add_on_exists_argument(parser: argparse.ArgumentParser, default: str = "refuse") -> None:
    from ray_app.existing_runs import ON_EXISTS_CHOICES

    parser.add_argument(
        "--on-exists",
        choices=ON_EXISTS_CHOICES,
        default=default,
        help="when a run of this name exists: refuse (default; a run with the same config just continues), "
        "new (train under the next free name, <name>-2), resume (continue it with this config, keeping stages "
        "still valid), replace (delete it and train afresh)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """A command that trains: a config, and what to do when its run exists."""
    add_config_arguments(parser)
    add_on_exists_argument(parser)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a run name or directory, or the YAML config that made the run")
    add_override_argument(parser)
    parser.add_argument("--root", default="./runs", help="runs root to search for a run name (default ./runs)")
    add_verbose_argument(parser)


def load_context(args: argparse.Namespace) -> StageContext:
    """The config and its run, and every local path it names checked: no Ray, torch or
    transformers is imported before this answers, so mistakes are reported at once.
    A command that trains (`--on-exists`) settles its run's name against what is on
    disk here: an existing run is never retrained with another config unasked."""
    from ray_app.config import check_paths_exist, load_config

    cfg = load_config(args.config, args.override)
    check_paths_exist(cfg)
    from ray_app.stages.context import StageContext

    if getattr(args, "on_exists", None) is not None:
        from ray_app.existing_runs import claim_run

        cfg = claim_run(cfg, args.on_exists)

    return StageContext.for_config(cfg)


def load_target(args: argparse.Namespace) -> StageContext:
    """A config file names its run through the name pattern; a run name or directory
    brings its own resolved config.yaml (overrides apply on top)."""
    from ray_app.config import load_config
    from ray_app.runs import resolve_run
    from ray_app.stages.context import StageContext

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        return StageContext.for_config(load_config(target, args.override))
    run = resolve_run(args.target, Path(args.root))
    return StageContext(load_config(run.config_path, args.override), run)


@contextmanager
def run_console(ctx: StageContext, args: argparse.Namespace) -> Iterator[Console]:
    """The command's console, its whole output kept in the run's log (and the context
    showing on it). The log starts once the run directory exists, so a config or data
    error leaves nothing behind."""
    from ray_app.console import open_console

    with open_console(ctx.run.log_path, verbose=args.verbose, ready=ctx.run.exists, argv=args.argv) as console:
        ctx.console = console
        yield console
