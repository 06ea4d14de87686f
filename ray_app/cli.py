"""`ray-app` command line: one dispatch table, every command with an example.

User errors (config, data, arguments) print one clear message and exit 2 with no
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ray_app.errors import UserError

if TYPE_CHECKING:  # the CLI imports the heavy modules lazily: --help and config errors stay fast
    from ray_app.config import AppConfig
    from ray_app.console import Console
    from ray_app.runs import Run


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


def _override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted path (repeatable), e.g. -o training.epochs=2",
    )


def _verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything on the console too (Ray's own output, worker logs); by default it goes "
        "to the run's log only (runs/<name>/logs/run.log, see `ray-app logs`)",
    )


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    _override_argument(parser)
    _verbose_argument(parser)


def _load(args: argparse.Namespace) -> tuple[AppConfig, Run]:
    """The config and its run, and every local path it names checked: no Ray, torch or
    transformers is imported before this answers, so mistakes are reported at once."""
    from ray_app.config import check_paths_exist, load_config
    from ray_app.runs import Run

    cfg = load_config(args.config, args.override)
    check_paths_exist(cfg)
    return cfg, Run.for_config(cfg)


@contextmanager
def _console_for(run: Run, args: argparse.Namespace) -> Iterator[Console]:
    """The command's console, its whole output kept in the run's log. The log starts
    once the run directory exists, so a config or data error leaves nothing behind."""
    from ray_app.console import open_console
    from ray_app.runlog import log_path

    with open_console(log_path(run.root), verbose=args.verbose, ready=run.exists, argv=args.argv) as console:
        yield console


def _print_splits(run: Run, out: Callable[[str], None] = print) -> None:
    summary = json.loads((run.splits_dir / "splits.json").read_text())
    out(f"splits of {summary['num_rows_used']} rows ({len(summary['label_names'])} classes, seed {summary['seed']}):")
    for split, info in summary["splits"].items():
        counts = info["class_counts"].values()
        out(f"  {split:<11} {info['count']:>7}  per class {min(counts)}..{max(counts)}")
    dup = summary["duplicates"]
    if dup["duplicate_groups"]:
        out(
            f"  duplicates: {dup['duplicate_rows']} rows in {dup['duplicate_groups']} groups, "
            f"kept within one split ({dup['conflicting_label_groups']} with conflicting labels)"
        )
    out(f"  -> {run.splits_dir / 'splits.json'}")


def _preflight(cfg: AppConfig) -> None:
    """Problems that need no Ray (a backbone or tokenizer that cannot load, a bad PEFT
    plan or init_from) stop before Ray starts; then Ray is started or joined."""
    from ray_app.pipeline import check_training_setup, init_ray, resolve_input_spec

    resolve_input_spec(cfg)
    check_training_setup(cfg)
    init_ray(cfg)


def cmd_splits(args: argparse.Namespace) -> int:
    cfg, run = _load(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import ensure_splits, init_ray

        init_ray(cfg)
        with console.stage(1, 1, "splits", run):
            ensure_splits(cfg, run, force=args.force)
        console.print(f"run {run.name}")
        _print_splits(run, console.print)
    return 0


def _add_splits_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rewrite splits even if they match")


def cmd_train(args: argparse.Namespace) -> int:
    cfg, run = _load(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import ensure_splits, run_training, training_heading

        _preflight(cfg)
        console.print(f"run {run.name} ({run.root})")
        with console.stage(1, 2, "splits", run):
            reader = ensure_splits(cfg, run)
        with console.stage(2, 2, "train", run, training_heading(cfg)):
            info = run_training(cfg, run, reader)
        best = ", ".join(f"{k}={v:.4f}" for k, v in info["best"].items())
        console.print(f"done in {info['seconds']:.1f}s: {info['epochs_run']} epoch(s), "
                      f"best epoch {info['best_epoch'] + 1} ({best})")
        if info.get("resumed_at"):
            console.print(f"  resumed after worker failure at epoch(s) {info['resumed_at']}")
        console.print(f"  metrics:     {run.train_dir / 'metrics.csv'}")
        console.print(f"  model:       {run.train_dir / 'model'}")
        console.print(f"  predictions: {run.train_dir / 'predictions'} (val_calib, val_test logits)")
    return 0


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a run name or directory, or the YAML config that made the run")
    _override_argument(parser)
    parser.add_argument("--root", default="./runs", help="runs root to search for a run name (default ./runs)")
    _verbose_argument(parser)


def _load_target(args: argparse.Namespace) -> tuple[AppConfig, Run]:
    """A config file names its run through the name pattern; a run name or directory
    brings its own resolved config.yaml (overrides apply on top)."""
    from ray_app.config import load_config
    from ray_app.runs import Run, resolve_run

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        cfg = load_config(target, args.override)
        return cfg, Run.for_config(cfg)
    run = resolve_run(args.target, Path(args.root))
    return load_config(run.root / "config.yaml", args.override), run


def cmd_calibrate(args: argparse.Namespace) -> int:
    cfg, run = _load_target(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import run_calibration

        with console.stage(1, 1, "calibrate", run):
            info = run_calibration(cfg, run)
        results = run.root / "calibration"
        console.print(f"run {run.name}: calibrated on val_calib in {info['seconds']:.1f}s")
        console.print(f"  temperature {info['temperature']:.4f}: ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f}")
        console.print(f"  policy:  {info['policy']} ({results / 'policy.json'})")
        console.print(f"  report:  {results / 'report.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg, run = _load_target(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import run_evaluation

        metrics = run_evaluation(cfg, run)
        policy = metrics["policy"]
        accepted = "-" if policy["accepted_accuracy"] is None else f"{policy['accepted_accuracy']:.4f}"
        console.print(f"run {run.name}: val_test ({metrics['n']} samples)")
        console.print(f"  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
                      f"NLL {metrics['calibrated']['nll']:.4f}  "
                      f"ECE {metrics['uncalibrated']['ece']:.4f} -> {metrics['calibrated']['ece']:.4f}")
        console.print(f"  policy {policy['rule']}: coverage {policy['coverage']:.3f}, accepted accuracy {accepted}, "
                      f"assist {policy['assist_rate']:.3f}, abstain {policy['abstain_rate']:.3f}")
        console.print(f"  -> {run.root / 'eval' / 'metrics.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    cfg, run = _load_target(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import run_export

        info = run_export(cfg, run)
        console.print(f"run {run.name}: bundle {info['bundle']} ({info['files']} files, verified)")
        console.print(f"  model version {info['model_version']}")
    return 0


def _print_summary(run: Run, out: Callable[[str], None]) -> None:
    metrics = json.loads((run.root / "eval" / "metrics.json").read_text())
    export = run.stage_info("export")
    policy = metrics["policy"]
    accepted = "-" if policy["accepted_accuracy"] is None else f"{policy['accepted_accuracy']:.4f}"
    rows = [
        ("val_test accuracy", f"{metrics['accuracy']:.4f} (macro-F1 {metrics['macro_f1']:.4f}, n={metrics['n']})"),
        ("val_test ECE", f"{metrics['uncalibrated']['ece']:.4f} -> {metrics['calibrated']['ece']:.4f} after temperature"),
        (f"policy {policy['rule']}", f"coverage {policy['coverage']:.3f}, accepted accuracy {accepted}, "
                                      f"assist {policy['assist_rate']:.3f}, abstain {policy['abstain_rate']:.3f}"),
        *_insight_rows(run),
        ("bundle", f"{export['bundle']} (verified; {export['model_version']})"),
        ("serve it", f"ray-app serve {export['bundle']}"),
    ]
    out("")
    out(f"run {run.name}")
    for label, value in rows:
        out(f"  {label:<22} {value}")


def _insight_rows(run: Run) -> list[tuple[str, str]]:
    """The reference model against the run, and the epoch time estimated before
    training against the one measured, when the run recorded them."""
    rows = []
    insights = run.stage_info("insights")
    reference = insights.get("reference")
    if reference:
        rows.append(("linear reference", f"{reference['val_test_accuracy']:.4f} val_test accuracy ({reference['kind']}, "
                                         f"C={reference['C']:g}) vs {insights['model_accuracy']:.4f} for this run"))
    timing = run.stage_info("train").get("epoch_seconds")
    if timing and timing.get("measured_median") is not None:
        rows.append(("epoch time", f"estimated {timing['estimated']:.2f}s, measured {timing['measured_median']:.2f}s "
                                   f"(median after the first epoch; x{timing['ratio']:.2f})"))
    if insights.get("status") == "complete" and not insights.get("disabled"):
        rows.append(("insights", f"{run.root / 'insights' / 'report.md'}"))
    return rows


def cmd_run(args: argparse.Namespace) -> int:
    from ray_app.runlog import log_path

    cfg, run = _load(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import run_pipeline

        _preflight(cfg)
        run.record_launch()
        console.print(f"run {run.name} ({run.root}) · log {log_path(run.root)}")
        run_pipeline(cfg, run, console)
        _print_summary(run, console.print)
    return 0


def cmd_insights(args: argparse.Namespace) -> int:
    cfg, run = _load_target(args)
    with _console_for(run, args) as console:
        from ray_app.pipeline import run_insights

        with console.stage(1, 1, "insights", run):
            info = run_insights(cfg, run)
        if info.get("disabled"):
            console.print(f"run {run.name}: insights are off (insights.enabled: false)")
            return 0
        console.print(f"run {run.name}: insights on val_test ({info['n']} rows) in {info['seconds']:.1f}s")
        for label, value in _insight_rows(run):
            console.print(f"  {label:<18} {value}")
    return 0


def _budget_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the whole budget as JSON instead of a table")
    parser.add_argument("--refresh", action="store_true", help="measure again even when a cached budget matches")


def cmd_budget(args: argparse.Namespace) -> int:
    """The budget needs no run directory; what Ray and the benchmark print goes to the
    budget cache's log, so the console shows the table only."""
    cfg, run = _load(args)
    from ray_app.budget import budget_lines, cache_dir, cache_path
    from ray_app.console import open_console

    cached = cache_path(cfg)
    if cached.is_file() and not args.refresh:  # asked before: a file read, no torch, no Ray
        budget = {**json.loads(cached.read_text()), "key": cached.stem, "cached": True, "cache_file": str(cached)}
    else:
        with open_console(cache_dir(cfg) / "budget.log", verbose=args.verbose, argv=args.argv) as console:
            from ray_app.budget import compute_budget
            from ray_app.pipeline import resolve_input_spec

            resolve_input_spec(cfg)  # a backbone or tokenizer that cannot load: exit 2 before any work
            console.status("measuring the compute budget…")
            budget = compute_budget(cfg, use_cache=not args.refresh)
    if args.json:
        print(json.dumps(budget, indent=2, sort_keys=True))
    else:
        print(f"config {args.config} (run {run.name})")
        for line in budget_lines(budget):
            print(line)
        print(f"  {'cached in':<26} {budget['cache_file']}")
    return 0


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)
    parser.add_argument(
        "--space",
        required=True,
        help="YAML of the search: config fields and their dimensions, trials, scheduler (see configs/sweeps/)",
    )
    parser.add_argument("--name", help="sweep name: <storage.root>/sweeps/<name>/ (default: the space file's name)")


def cmd_sweep(args: argparse.Namespace) -> int:
    import re

    from ray_app.sweep import load_sweep, run_sweep, sweep_directory

    cfg, _ = _load(args)
    base_raw = cfg.resolved_dict()
    sweep = load_sweep(args.space, base_raw)
    name = args.name or Path(args.space).stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"--name '{name}': use letters, digits, '.', '_' and '-' only (it names a directory)")
    command = " ".join(
        ["ray-app sweep", args.config, "--space", args.space, *(f"-o {o}" for o in args.override)]
        + ([f"--name {args.name}"] if args.name else [])
    )
    from ray_app.console import open_console
    from ray_app.runlog import LOG_DIR

    directory = sweep_directory(cfg, name)
    with open_console(directory / LOG_DIR / "sweep.log", verbose=args.verbose, ready=directory.is_dir,
                      argv=args.argv) as console:
        _preflight(cfg)
        outcome = run_sweep(cfg, base_raw, sweep, name, command, echo=console.print)
        console.print(f"\nsweep {name}: {len(outcome.rows)} trial(s), best first ({outcome.directory / 'results.md'})")
        console.print(outcome.table)
        console.print(f"\nbest config ({outcome.best_config}):")
        console.print(outcome.best_config.read_text().rstrip("\n"))
        console.print(f"\nnext: ray-app run {outcome.best_config}   (calibrates and exports run {outcome.best.run})")
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory, e.g. runs/<name>/bundle")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--config", help="YAML of serve settings (see serve/config.py: batching, replicas, limits, policy)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the Ray Serve config file for these settings (for `serve deploy`) and exit",
    )
    _override_argument(parser)
    parser.epilog = (parser.epilog or "") + (
        "\n\nA token (env RAY_APP_SERVE_TOKEN or -o token=...) makes every request but "
        "/healthz need 'Authorization: Bearer <token>'."
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from ray_app.serving import load_serve_config, serve_until_stopped

    config = load_serve_config(args.bundle, args.config, args.override, args.host, args.port)
    if args.print_config:
        import yaml

        from serve.app import serve_deploy_config

        print(f"# serve deploy FILE   (written by: ray-app serve {args.bundle} --print-config)")
        print("# Edit user_config and deploy again to change the policy in place; a token comes")
        print("# from RAY_APP_SERVE_TOKEN on the cluster or args.token.")
        print(yaml.safe_dump(serve_deploy_config([config], include_token=False), sort_keys=False), end="")
        return 0
    try:
        serve_until_stopped(config, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        # A Ctrl-C before serve_until_stopped takes Ctrl-C over (while Serve starts), or
        # one Ray hands on again after the stop: Serve and Ray are already shut down by
        # serve_until_stopped's cleanup, so the exit is clean, not an interruption.
        pass
    return 0


def _runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show"], help="list all runs, or show one")
    parser.add_argument("name", nargs="?", help="run name or directory (for show)")
    parser.add_argument("--root", default="./runs", help="runs root to scan (default ./runs)")


def cmd_runs(args: argparse.Namespace) -> int:
    from ray_app.runlog import log_path
    from ray_app.runs import find_runs, resolve_run

    root = Path(args.root)
    if args.action == "list":
        runs = find_runs(root)
        if not runs:
            print(f"no runs under {root}")
            return 0
        print(f"{'run':<48} {'splits':<10} {'train':<10} {'best val_select':<24} created")
        for run in runs:
            meta = run.metadata()
            stages = meta.get("stages", {})
            best = stages.get("train", {}).get("best", {})
            shown = ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in best.items() if "loss" not in k)
            print(
                f"{run.name:<48} {stages.get('splits', {}).get('status', '-'):<10} "
                f"{stages.get('train', {}).get('status', '-'):<10} {shown or '-':<24} {meta.get('created', '-')}"
            )
        return 0
    if not args.name:
        raise UserError("runs show needs a run name: ray-app runs show <name>")
    run = resolve_run(args.name, root)
    meta = run.metadata()
    print(f"run {run.name} ({run.root})")
    print(f"  created {meta.get('created')}, config {meta.get('config_fingerprint')}")
    for stage, info in meta.get("stages", {}).items():
        extra = f", error: {info['error']}" if info.get("error") else ""
        print(f"  {stage:<8} {info.get('status')} ({info.get('seconds', '-')}s){extra}")
    log = log_path(run.root)
    if log.is_file():
        print(f"  logs     {log} ({log.stat().st_size:,} bytes): ray-app logs {run.name} --root {root} --tail 50")
    else:
        print(f"  logs     none yet ({log})")
    if (run.splits_dir / "splits.json").is_file():
        _print_splits(run)
    metrics = run.train_dir / "metrics.jsonl"
    if metrics.is_file():
        print("  epoch  train/loss  val_select/loss  accuracy  macro_f1")
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            print(
                f"  {row['epoch']:>5}  {row['train/loss']:>10.4f}  {row['val_select/loss']:>15.4f}"
                f"  {row['val_select/accuracy']:>8.4f}  {row['val_select/macro_f1']:>8.4f}"
            )
    return 0


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run name or directory")
    parser.add_argument("--root", default="./runs", help="runs root to search for a run name (default ./runs)")
    parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    parser.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing new lines as the run writes them, until its command ends (or Ctrl-C)",
    )


def cmd_logs(args: argparse.Namespace) -> int:
    import time

    from ray_app.runlog import MAX_TAIL_LINES, is_end_line, log_path, read_from, tail_lines
    from ray_app.runs import resolve_run

    if args.tail is not None and not 0 < args.tail <= MAX_TAIL_LINES:
        raise UserError(f"--tail {args.tail}: give a number of lines from 1 to {MAX_TAIL_LINES}")
    run = resolve_run(args.run, Path(args.root))
    path = log_path(run.root)
    if not path.is_file():
        raise UserError(f"run '{run.name}' has no log yet ({path}); it is written by ray-app run / train / "
                        "calibrate / evaluate / export on this run")
    if args.tail is not None:
        lines = tail_lines(path, args.tail)
        offset = path.stat().st_size
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


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("--runs-root", default="./runs", help="the runs the service keeps and launches (default ./runs)")
    parser.add_argument("--templates-root", help="template YAML files (default: templates/ next to the runs root)")
    parser.add_argument(
        "--ray-address",
        help="job server of the Ray cluster to launch runs on, e.g. http://head:8265 (default: start a local "
        "Ray head); a token-auth cluster needs RAY_AUTH_MODE=token, as `ray job submit` does",
    )
    parser.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray head (default: this machine's cores)")
    parser.add_argument("--no-ray", action="store_true",
                        help="serve the runs root without Ray (no head started, none joined): runs, metrics, logs, "
                        "templates and families are served; launch, stop and rerun answer 503")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request on the console")
    parser.epilog = (parser.epilog or "") + (
        "\n\nA token (env RAY_APP_SERVER_TOKEN) makes every API request need 'Authorization: Bearer <token>'."
    )


def cmd_server(args: argparse.Namespace) -> int:
    import os

    if args.ray_address is None:
        # The local head enforces Ray's token auth, and Ray's jobs client sends the token
        # only in this mode, read when Ray is first imported: set it before any import.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray_app.config import validate_model
    from ray_app.server.settings import ServerSettings

    raw = {"runs_root": args.runs_root, "host": args.host, "port": args.port, "ray_address": args.ray_address,
           "templates_root": args.templates_root, "local_ray_cpus": args.ray_cpus, "ray_jobs": not args.no_ray}
    settings = validate_model(ServerSettings, {k: v for k, v in raw.items() if v is not None}, "server settings")
    from ray_app.serving import check_port_free

    check_port_free(settings.host, settings.port)
    import uvicorn

    from ray_app.server.app import create_app

    app = create_app(settings)
    where = (settings.ray_address or "a local Ray head (starting)") if settings.ray_jobs else "none (--no-ray)"
    print(f"control plane at http://{settings.host}:{settings.port} (API docs: /docs) · runs {settings.runs_root} "
          f"· templates {settings.templates_root} · Ray jobs on {where}"
          + (" · token required" if settings.token_value else ""), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose)
    return 0


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="control plane URL (default $RAY_APP_SERVER or http://127.0.0.1:8080); "
                        "token from $RAY_APP_SERVER_TOKEN")


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config to launch (or --template)")
    _override_argument(parser)
    parser.add_argument("--template", help="launch a saved template instead of a config file")
    _client_arguments(parser)


def cmd_submit(args: argparse.Namespace) -> int:
    from ray_app.config import read_yaml_mapping
    from ray_app.server.client import ServerClient
    from ray_app.server.service import absolute_paths

    if (args.config is None) == (args.template is None):
        raise UserError("give a config file or --template NAME (one of them): ray-app submit configs/digits.yaml")
    body: dict[str, object] = {"overrides": args.override}
    if args.config is not None:
        raw = read_yaml_mapping(Path(args.config))
        absolute_paths(raw, Path.cwd())  # paths in a config mean where it is submitted from
        body["config"] = raw
    else:
        body["template"] = args.template
    client = ServerClient(args.server)
    launched = client.request("POST", "/api/v1/runs", body)
    print(f"run {launched['run']} · job {launched['submission_id']} ({launched['status']})")
    print(f"  follow: curl -N {client.url}/api/v1/runs/{launched['run']}/metrics/stream")
    print(f"  logs:   curl -N {client.url}/api/v1/runs/{launched['run']}/logs/stream")
    return 0


def _templates_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show", "save", "suggest", "delete"],
                        help="list templates; show NAME; save CONFIG; suggest CONFIG (name and description only); delete NAME")
    parser.add_argument("target", nargs="?", help="template name (show, delete) or YAML config (save, suggest)")
    _override_argument(parser)
    parser.add_argument("--name", help="save: the template's name (default: the suggested one)")
    parser.add_argument("--description", help="save: its description (default: the suggested one)")
    parser.add_argument("--overwrite", action="store_true", help="save: replace a template of the same name")
    parser.add_argument("--runs-root", default="./runs", help="the templates live in templates/ next to it (default ./runs)")
    parser.add_argument("--templates-root", help="the templates directory itself (default: templates/ next to the runs root)")


def cmd_templates(args: argparse.Namespace) -> int:
    """Templates are files: these commands work on the templates directory directly,
    the one a control plane with the same runs root uses."""
    from ray_app.config import apply_overrides, read_yaml_mapping, validate_config
    from ray_app.errors import ConfigError
    from ray_app.templates import Template, TemplateStore, render_template, suggest_template, templates_dir

    store = TemplateStore(Path(args.templates_root) if args.templates_root else templates_dir(args.runs_root))
    if args.action == "list":
        found = store.list()
        if not found:
            print(f"no templates in {store.root} (save one: ray-app templates save configs/digits.yaml)")
        for template in found:
            print(f"{template.name:<44} {template.family or '-':<11} {template.description}")
        return 0
    if not args.target:
        what = "a template name" if args.action in ("show", "delete") else "a YAML config"
        raise UserError(f"templates {args.action} needs {what}: ray-app templates {args.action} "
                        + ("<name>" if args.action in ("show", "delete") else "configs/digits.yaml"))
    if args.action == "show":
        print(render_template(store.get(args.target)), end="")
        return 0
    if args.action == "delete":
        store.delete(args.target)
        print(f"deleted template {args.target} ({store.root})")
        return 0
    raw = read_yaml_mapping(Path(args.target))
    problems = apply_overrides(raw, args.override)
    if problems:
        raise ConfigError(problems, "overrides")
    suggestion = suggest_template(validate_config(dict(raw), args.target))
    if args.action == "suggest":
        print(f"name:        {suggestion.name}\ndescription: {suggestion.description}\nfamily:      {suggestion.family}")
        return 0
    saved = store.save(Template(name=args.name or suggestion.name, description=args.description or suggestion.description,
                                config=raw), overwrite=args.overwrite)
    print(f"saved template {saved.name} ({store.path(saved.name)}): {saved.description}")
    print(f"  launch: ray-app submit --template {saved.name}")
    return 0


def _families_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show"], help="list the model families, or show one's parameters")
    parser.add_argument("name", nargs="?", help="family name (for show), e.g. vit")


def cmd_families(args: argparse.Namespace) -> int:
    from trainers.families import family_registry

    registry = family_registry()
    if args.action == "list":
        for family in registry.values():
            print(f"{family.name:<12} {family.modality:<6} {family.title:<34} variants: {family.variant_pattern}")
        return 0
    if not args.name:
        raise UserError("families show needs a family name: ray-app families show vit")
    family = registry.get(args.name)
    if family is None:
        raise UserError(f"no model family named '{args.name}'; families: {', '.join(registry)}")
    info = family.info()
    print(f"{info.title} ({info.name}, {info.modality}): {info.description}")
    print(f"variant names: {info.variant_pattern}" + (f" · model_type {info.model_type}" if info.model_type else ""))
    schema = info.params_schema
    required = set(schema.get("required", []))
    for field, spec in schema.get("properties", {}).items():
        default = "required" if field in required else f"default {spec.get('default')!r}"
        print(f"  {field:<28} {default:<16} {spec.get('description', '')}")
    if schema.get("additionalProperties", True) is not False:
        print("  (other Hugging Face config keys pass through to the model's config unchecked)")
    return 0


COMMANDS: dict[str, Command] = {
    "run": Command(
        help="every stage in order: splits, train, calibrate, evaluate, insights, export (resumable)",
        example="ray-app run configs/digits.yaml -o training.epochs=5",
        add_arguments=_config_arguments,
        handler=cmd_run,
    ),
    "splits": Command(
        help="read the dataset with Ray Data and write deterministic stratified splits",
        example="ray-app splits configs/digits.yaml -o seed=1",
        add_arguments=_add_splits_arguments,
        handler=cmd_splits,
    ),
    "train": Command(
        help="train a classifier on Ray Train (makes the splits first if needed)",
        example="ray-app train configs/digits.yaml -o training.epochs=2 -o scaling.num_workers=2",
        add_arguments=_config_arguments,
        handler=cmd_train,
    ),
    "calibrate": Command(
        help="fit temperature, threshold, guardrail (Ray Tune) and risk control on val_calib",
        example="ray-app calibrate sklearn_digits_vit_baseline_lr0.002_s0 -o calibration.policy=risk_control",
        add_arguments=_target_arguments,
        handler=cmd_calibrate,
    ),
    "evaluate": Command(
        help="final metrics on val_test under the run's policy",
        example="ray-app evaluate configs/digits.yaml",
        add_arguments=_target_arguments,
        handler=cmd_evaluate,
    ),
    "insights": Command(
        help="on val_test: meaning map, storyboard, linear reference model (insights/report.md)",
        example="ray-app insights sklearn_digits_vit_baseline_lr0.002_s0 -o insights.max_points=2000",
        add_arguments=_target_arguments,
        handler=cmd_insights,
    ),
    "budget": Command(
        help="before a run: rows, tokens or patches per epoch, parameters, FLOPs, estimated epoch time (cached)",
        example="ray-app budget configs/digits.yaml -o training.batch_size=64",
        add_arguments=_budget_arguments,
        handler=cmd_budget,
    ),
    "export": Command(
        help="seal the selected model and the policy into a verified bundle directory",
        example="ray-app export sklearn_digits_vit_baseline_lr0.002_s0",
        add_arguments=_target_arguments,
        handler=cmd_export,
    ),
    "sweep": Command(
        help="Ray Tune over training hyperparameters (ASHA); every trial a run; writes results and best.yaml",
        example="ray-app sweep configs/digits.yaml --space configs/sweeps/digits_lr.yaml",
        add_arguments=_sweep_arguments,
        handler=cmd_sweep,
    ),
    "serve": Command(
        help="serve a bundle on Ray Serve: POST /predict, GET /healthz, /metadata (Ctrl-C stops)",
        example="ray-app serve runs/sklearn_digits_vit_baseline_lr0.002_s0/bundle --port 8000 -o max_batch_size=64",
        add_arguments=_serve_arguments,
        handler=cmd_serve,
    ),
    "logs": Command(
        help="print a run's log: the whole output of every stage, driver and workers, kept across reruns",
        example="ray-app logs smoke_vit_baseline_s0 --tail 50  |  ray-app logs <run-name> --follow",
        add_arguments=_logs_arguments,
        handler=cmd_logs,
    ),
    "server": Command(
        help="the control plane: launch runs as Ray jobs, follow their metrics and logs, templates, families",
        example="ray-app server --port 8080  |  ray-app server --ray-address http://head:8265 --runs-root /mnt/shared/runs",
        add_arguments=_server_arguments,
        handler=cmd_server,
    ),
    "submit": Command(
        help="launch a run through the control plane (a Ray job); prints the run and the job id",
        example="ray-app submit configs/digits.yaml -o training.lr=0.001",
        add_arguments=_submit_arguments,
        handler=cmd_submit,
    ),
    "templates": Command(
        help="named, described configs kept as YAML next to the runs root: list, show, save, suggest, delete",
        example="ray-app templates save configs/digits.yaml  |  ray-app templates list  |  ray-app templates show <name>",
        add_arguments=_templates_arguments,
        handler=cmd_templates,
    ),
    "families": Command(
        help="the model families a config can train, and each one's parameters with defaults",
        example="ray-app families list  |  ray-app families show vit",
        add_arguments=_families_arguments,
        handler=cmd_families,
    ),
    "runs": Command(
        help="list runs or show one (found by scanning the runs root)",
        example="ray-app runs list  |  ray-app runs show <run-name>",
        add_arguments=_runs_arguments,
        handler=cmd_runs,
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
