"""The service's commands: `server` (the control plane and its dashboard), `submit`
(launch a run through it), `templates` (named, described configs) and `families` (the
model families a config can train)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ray_app.cli.arguments import add_on_exists_argument, add_override_argument
from ray_app.errors import UserError
from ray_app.ray_runtime import AUTH_MODE_ENV, check_port_free


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--drift-psi", type=float,
                        help="the monitor flags drift past this population stability index, its test agreeing "
                             "(default 0.2)")
    parser.add_argument("--drift-p", type=float, help="significance level of the monitor's drift tests (default 0.01)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request on the console")
    parser.epilog = (parser.epilog or "") + (
        "\n\nA token (env RAY_APP_SERVER_TOKEN) makes every API request need 'Authorization: Bearer <token>'."
    )


def cmd_server(args: argparse.Namespace) -> int:
    if args.ray_address is None:
        # The local head enforces Ray's token auth, and Ray's jobs client sends the token
        # only in this mode, read when Ray is first imported: set it before any import.
        os.environ.setdefault(AUTH_MODE_ENV, "token")
    from ray_app.config import validate_model
    from ray_app.control_plane.settings import ServerSettings

    raw = {"runs_root": args.runs_root, "host": args.host, "port": args.port, "ray_address": args.ray_address,
           "templates_root": args.templates_root, "local_ray_cpus": args.ray_cpus, "ray_jobs": not args.no_ray,
           "drift_psi": args.drift_psi, "drift_p": args.drift_p}
    settings = validate_model(ServerSettings, {k: v for k, v in raw.items() if v is not None}, "server settings")
    check_port_free(settings.host, settings.port)
    import uvicorn

    from ray_app.control_plane.app import create_app

    app = create_app(settings)
    where = (settings.ray_address or "a local Ray head (starting)") if settings.ray_jobs else "none (--no-ray)"
    print(f"control plane at http://{settings.host}:{settings.port} (API docs: /docs) · runs {settings.runs_root} "
          f"· templates {settings.templates_root} · Ray jobs on {where}"
          + (" · token required" if settings.token_value else ""), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose)
    return 0


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="control plane URL (default $RAY_APP_SERVER or http://127.0.0.1:8080); "
                        "token from $RAY_APP_SERVER_TOKEN")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config to launch (or --template)")
    add_override_argument(parser)
    parser.add_argument("--template", help="launch a saved template instead of a config file")
    add_on_exists_argument(parser)
    _add_client_arguments(parser)


def cmd_submit(args: argparse.Namespace) -> int:
    from ray_app.config import read_yaml_mapping
    from ray_app.control_plane.client import ServerClient
    from ray_app.control_plane.service import absolute_paths
    from ray_app.control_plane.settings import SERVER_TOKEN_ENV

    if (args.config is None) == (args.template is None):
        raise UserError("give a config file or --template NAME (one of them): ray-app submit configs/digits.yaml")
    body: dict[str, object] = {"overrides": args.override, "on_exists": args.on_exists}
    if args.config is not None:
        raw = read_yaml_mapping(Path(args.config))
        absolute_paths(raw, Path.cwd())  # paths in a config mean where it is submitted from
        body["config"] = raw
    else:
        body["template"] = args.template
    client = ServerClient(args.server)
    launched = client.request("POST", "/api/v1/runs", body)
    print(f"run {launched['run']} · job {launched['submission_id']} ({launched['status']})")
    # The hints work as printed: with the bearer header when the server wants a token
    # (read from the environment, so the token itself is never printed).
    auth = f'-H "Authorization: Bearer ${SERVER_TOKEN_ENV}" ' if client.token else ""
    print(f"  follow: curl -N {auth}{client.url}/api/v1/runs/{launched['run']}/metrics/stream")
    print(f"  logs:   curl -N {auth}{client.url}/api/v1/runs/{launched['run']}/logs/stream")
    return 0


def add_templates_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show", "save", "suggest", "delete"],
                        help="list templates; show NAME; save CONFIG; suggest CONFIG (name and description only); delete NAME")
    parser.add_argument("target", nargs="?", help="template name (show, delete) or YAML config (save, suggest)")
    add_override_argument(parser)
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


def add_families_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show"], help="list the model families, or show one's parameters")
    parser.add_argument("name", nargs="?", help="family name (for show), e.g. vit")
    parser.add_argument("--root", default="./runs", help="show: list the family's trained runs under this runs root "
                        "(default ./runs)")


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
    from ray_app.runs import family_variants

    variants = family_variants(Path(args.root), family.name)
    print(f"trained variants under {args.root}:" + ("" if variants else " none"))
    for variant in variants:
        print(f"  {variant.variant:<28} {variant.run} (train {variant.train_status or '-'})")
    return 0
