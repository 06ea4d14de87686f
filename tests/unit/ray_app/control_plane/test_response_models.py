"""Every JSON route of the control plane declares a response model (so /openapi.json
documents what it returns), every field of those models says what it holds, and the
models hand back what the routes built: no key dropped, none added."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import requests
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel

from ray_app.control_plane.app import API_PREFIX, create_app
from tests.helpers.configs import SMOKE
from tests.helpers.runs import make_run
from tests.helpers.servers import running_server


def json_routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    """(method, path, route) of every API route, included routers' routes under their
    prefixes. Recent FastAPI keeps an included router as one entry of `app.routes`;
    `iter_route_contexts` walks into it."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI that copies a router's routes into app.routes
        routes: list[Any] = [r for r in app.routes if isinstance(r, APIRoute)]
    else:
        routes = [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]
    found = []
    for route in routes:
        if not (route.path.startswith(f"{API_PREFIX}/") or route.path == "/healthz"):
            continue  # the dashboard's pages and the sign-in form
        response_class = getattr(route.response_class, "value", route.response_class)  # unwrap the default
        if isinstance(response_class, type) and issubclass(response_class, EventSourceResponse):
            continue  # Server-Sent Events: a stream, not one JSON document
        if route.status_code == 204:
            continue  # no body
        for method in sorted(route.methods):
            found.append((method, route.path, route))
    return found


def is_model(annotation: Any) -> bool:
    """A pydantic model, or a list of one: not a bare dict, which documents nothing."""
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    return typing.get_origin(annotation) is list and all(is_model(a) for a in typing.get_args(annotation))


def models_within(annotation: Any, seen: set[type[BaseModel]]) -> None:
    """Every model an annotation reaches: fields' models, list and dict values, unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in seen:
            seen.add(annotation)
            for field in annotation.model_fields.values():
                models_within(field.annotation, seen)
        return
    for argument in typing.get_args(annotation):
        models_within(argument, seen)


def test_every_json_route_declares_a_response_model(tmp_path: Path) -> None:
    app = create_app(runs_root=tmp_path / "runs", ray_jobs=False)
    routes = json_routes(app)
    checked = {(method, path) for method, path, _ in routes}
    # The walk found the routers' routes, not only the app's own two.
    assert {("GET", "/healthz"), ("GET", f"{API_PREFIX}/runs/{{name}}"), ("POST", f"{API_PREFIX}/budget"),
            ("GET", f"{API_PREFIX}/runs/{{name}}/meaning-map"), ("GET", f"{API_PREFIX}/presets/{{name}}")} <= checked
    # A return annotation alone (`-> dict[str, Any]`) makes FastAPI set response_model to
    # that dict: declared, but documenting nothing. Every route names a model.
    missing = sorted(f"{method} {path}: {route.response_model}" for method, path, route in routes
                     if route.response_model is None or not is_model(route.response_model))
    assert not missing, "routes without a response model:\n" + "\n".join(missing)

    ours: set[type[BaseModel]] = set()
    for _, _, route in routes:
        models_within(route.response_model, ours)
    undescribed = sorted(f"{model.__module__}.{model.__name__}.{name}" for model in ours
                         if model.__module__.startswith("ray_app.control_plane")
                         for name, field in model.model_fields.items() if not field.description)
    assert not undescribed, "response model fields without a description:\n" + "\n".join(undescribed)
    assert json.dumps(app.openapi())  # the schema builds


def test_response_models_return_what_the_routes_built(tmp_path: Path) -> None:
    """Keys a route leaves out stay out, open-ended documents keep every key (in order),
    and the run detail keeps its index row first."""
    runs = tmp_path / "runs"
    run = make_run(runs, "done_run", log="t [train] hello\n")
    app = create_app(runs_root=runs, ray_jobs=False, presets_root=SMOKE.parent)
    with running_server(app) as url:
        api = f"{url}{API_PREFIX}"
        assert requests.get(f"{api}/runs/done_run/progress").json() == {}  # no progress.json: no keys
        (run / "train" / "progress.json").write_text(json.dumps(
            {"epoch": 1, "epochs": 3, "step": 4, "steps": 16, "loss": None, "epoch_started": 1.5, "updated": 2.5}))
        progress = requests.get(f"{api}/runs/done_run/progress").text
        assert progress == '{"epoch":1,"epochs":3,"step":4,"steps":16,"loss":null,"epoch_started":1.5,"updated":2.5}'

        preset = requests.get(f"{api}/presets/smoke").json()
        written = yaml.safe_load(SMOKE.read_text())
        assert preset == written and list(preset) == list(written)  # as written: no section added

        detail = requests.get(f"{api}/runs/done_run").json()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert detail["config"] == config and list(detail["config"]) == list(config)
        assert list(detail)[:3] == ["name", "created", "status"] and detail["progress"]["step"] == 4
        assert detail["job"] is None and detail["bundle"] is None and detail["logs"]["bytes"] == len("t [train] hello\n")

        (run / "config.yaml").unlink()
        assert requests.get(f"{api}/runs/done_run").json()["config"] == {}  # no config yet: empty, not nulls

        health = requests.get(f"{url}/healthz").json()
        assert list(health) == ["status", "version", "runs_root", "ray"] and health["ray"]["ready"] is False
