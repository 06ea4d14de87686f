"""The Ray Serve application: a FastAPI ingress in front of one bundle.

    POST /predict    a batch of images / pixel arrays / texts -> calibrated answers
    GET  /healthz    liveness (no token needed, so probes can call it)
    GET  /metadata   model version, labels, input format, the policy in force, limits
    GET  /docs, /openapi.json   the schema FastAPI generates

Every answer is recorded off the request path (`serve.decisions`): the request only
queues it, a thread of the replica writes it, and `__del__` (Serve's shutdown hook)
writes what is still queued.

Every input of every request goes through one `@serve.batch` method, so inputs from
different callers share a forward pass. Batch size and wait, top-k and the policy are
`user_config`: changing them calls `reconfigure` on the running replicas, no restart.

The FastAPI app is built per replica (`__serve_build_asgi_app__`), after the
constructor, so its body-size limit and token come from that replica's settings.

`build_app` is the importable builder for `serve run` / `serve deploy`:

    serve run serve.app:build_app bundle=runs/<name>/bundle
"""

# No `from __future__ import annotations` here: Serve pickles the deployment class by
# value, which drops module globals that only string annotations mention, and FastAPI
# needs the real `Request` annotation to recognise the route parameter.
import asyncio
import hmac
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from pydantic import SecretStr, ValidationError
from ray import serve
from ray.serve import Application

from calibration.policy import Policy
from serve.bundle import load_bundle, verify_bundle
from serve.config import TOKEN_ENV, ServeConfig
from serve.decisions import default_directory_for_bundle, open_recorder
from serve.http_errors import BodyLimit, error_response, validation_detail
from serve.predictor import BundlePredictor, InputError, ModelInput, PredictRequest, PredictResponse

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
OPEN_PATHS = frozenset({"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class RequestGate:
    """ASGI middleware run before the app reads anything: a request without the token
    gets 401, and a body over `max_body_bytes` gets 413 (`BodyLimit`)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, token: str | None) -> None:
        self.app = app
        self.limited = BodyLimit(app, max_body_bytes, "send fewer or smaller inputs")
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not self._authorized(scope, headers):
            response = error_response(401, "unauthorized", "send the header 'Authorization: Bearer <token>'")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.limited(scope, receive, send)

    def _authorized(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
        if self.token is None:
            return True
        path, prefix = scope.get("path", ""), scope.get("root_path", "")
        if prefix and path.startswith(prefix):
            path = path[len(prefix):] or "/"
        if path in OPEN_PATHS:
            return True
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


@serve.deployment
@serve.ingress()
class ClassifierDeployment:
    def __init__(self, config: ServeConfig) -> None:
        # Ray sets OMP_NUM_THREADS from the reserved CPUs, but only when it is unset
        # and before torch is imported; setting torch's own count here holds either way.
        torch.set_num_threads(config.resolved_torch_threads())
        self.config = config
        on_gpu = config.num_gpus_per_replica > 0
        if on_gpu and not torch.cuda.is_available():
            raise RuntimeError(
                f"num_gpus_per_replica is {config.num_gpus_per_replica} but torch sees no CUDA device "
                f"on this replica (torch {torch.__version__}); install a CUDA build of torch there"
            )
        self.predictor = BundlePredictor(
            load_bundle(Path(config.bundle)),
            config.max_image_pixels,
            device="cuda" if on_gpu else "cpu",
            dtype=config.precision,
            text_chunk_size=config.resolved_text_chunk_size(on_gpu),
        )
        self.token = config.token.get_secret_value() if config.token else None
        self.started_at = time.time()
        # Counters in /metadata: how well requests from different callers are batched.
        # forward_seconds: wall time of the batches' preprocessing and forwards; set
        # against the replica's uptime it tells a model-bound replica (close to 1) from
        # one that spends its time on requests around the model.
        self.stats: dict[str, float] = {"requests": 0, "inputs": 0, "forward_passes": 0, "largest_batch": 0,
                                         "forward_seconds": 0.0}
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        bundle = self.predictor.bundle
        self.recorder = open_recorder(config.decisions, default_directory_for_bundle(bundle.directory, bundle.manifest),
                                      self.replica_id)
        self.reconfigure(config.user_config())

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown (a redeploy that replaces or removes
        # the replica, serve.shutdown): the answers still queued are written before the
        # process ends. Also reached by garbage collection, possibly after a failed
        # constructor, hence the getattr; close() runs once.
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.close()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new policy / top-k / batching on the running replica."""
        policy = user_config.get("policy")
        self.policy = Policy.model_validate(policy) if policy else self.predictor.bundle.policy
        self.top_k = int(user_config.get("top_k") or self.config.top_k)
        self.max_batch_size = int(user_config.get("max_batch_size") or self.config.max_batch_size)
        wait = user_config.get("batch_wait_timeout_s")
        self.batch_wait_timeout_s = float(self.config.batch_wait_timeout_s if wait is None else wait)
        self.forward_batch.set_max_batch_size(self.max_batch_size)
        self.forward_batch.set_batch_wait_timeout_s(self.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def forward_batch(self, inputs: list[ModelInput]) -> list[np.ndarray | InputError]:
        # Preprocessing and the forward run in a thread, once per batch, so the event
        # loop keeps parsing requests and filling the next batch meanwhile. An image
        # that does not decode comes back as its InputError; the rest are answered.
        started = time.perf_counter()
        results = await asyncio.to_thread(self.predictor.logits_or_errors, inputs)
        self.stats["forward_seconds"] += time.perf_counter() - started
        self.stats["forward_passes"] += 1
        self.stats["inputs"] += len(inputs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(inputs))
        return results

    async def predict(self, request: PredictRequest, request_id: str) -> PredictResponse:
        started = time.perf_counter()
        inputs = self.predictor.prepare(request, self.config.max_inputs_per_request)
        self.stats["requests"] += 1
        results = await asyncio.gather(*(self.forward_batch(x) for x in inputs))
        for result in results:
            if isinstance(result, InputError):
                raise result
        # The policy is read after the forward: a reconfigure applies to every answer
        # sent after it.
        policy = self.policy
        predictions = self.predictor.answer(np.stack(results), policy, request.top_k or self.top_k)
        model_version = self.predictor.bundle.model_version
        if self.recorder is not None:
            self.recorder.record(request_id, model_version, policy, predictions, request.inputs, inputs,
                                 latency_ms=1000 * (time.perf_counter() - started))
        return PredictResponse(model_version=model_version, predictions=predictions)

    def metadata(self) -> dict[str, Any]:
        bundle = self.predictor.bundle
        return {
            "model_version": bundle.model_version,
            "run": bundle.manifest.get("run"),
            "splits_fingerprint": bundle.manifest.get("splits_fingerprint"),
            "label_names": self.predictor.label_names,
            "input": self.predictor.input_description(),
            "policy": self.policy.model_dump(),
            "top_k": self.top_k,
            "batching": {
                "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s,
            },
            "limits": {
                "max_inputs_per_request": self.config.max_inputs_per_request,
                "max_body_bytes": self.config.max_body_bytes,
                "max_image_pixels": self.config.max_image_pixels,
            },
            "versions": bundle.manifest.get("versions", {}),
            "replica": {"id": self.replica_id, "started_at": self.started_at, "device": str(self.predictor.device),
                        "precision": self.config.precision, "torch_threads": torch.get_num_threads(), **self.stats},
            "token_required": self.token is not None,
            "decisions": self.recorder.stats() if self.recorder is not None else {"enabled": False},
        }

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(
            title="ray-app classifier",
            version=self.predictor.bundle.model_version,
            description="Calibrated predictions with accept / assist / abstain decisions from a verified ray-app bundle.",
        )

        @app.post(
            "/predict",
            response_model=PredictResponse,
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}}},
            responses={400: {"description": "invalid JSON"}, 401: {"description": "missing or wrong token"},
                       413: {"description": "body or image too large"}, 422: {"description": "inputs the model cannot take"}},
        )
        async def predict_route(request: Request) -> Any:
            # The body is parsed here rather than by FastAPI so every kind of bad request
            # gets the same {"error", "detail"} shape and a specific status.
            try:
                payload = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return error_response(400, "invalid JSON", f"the body is not valid JSON ({exc})")
            try:
                parsed = PredictRequest.model_validate(payload)
            except ValidationError as exc:
                return error_response(422, "invalid request", validation_detail(exc))
            # Serve's ingress gives every request an x-request-id (the caller's own if it
            # sent one) and returns it in the response: the key to the recorded answers.
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            try:
                return await self.predict(parsed, request_id)
            except InputError as exc:
                return error_response(exc.status, "invalid input", str(exc))

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "model_version": self.predictor.bundle.model_version}

        @app.get("/metadata")
        async def metadata() -> dict[str, Any]:
            return self.metadata()

        _register_request_schema(app)
        app.add_middleware(RequestGate, max_body_bytes=self.config.max_body_bytes, token=self.token)
        return app


def _register_request_schema(app: FastAPI) -> None:
    """Put PredictRequest (and its nested models) into the OpenAPI components, since
    /predict reads its body itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            request_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["PredictRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def cluster_resources() -> dict[str, float]:
    """The resources of the Ray cluster this process is connected to; without one (a
    config file written before anything starts), this machine's CPUs."""
    import ray

    if ray.is_initialized():
        return {key: float(value) for key, value in ray.cluster_resources().items()}
    return {"CPU": float(os.cpu_count() or 1)}


def build_app(args: ServeConfig) -> Application:
    """The Serve application for one bundle (also the `serve run` / `serve deploy`
    import path: `serve.app:build_app`). The bundle is verified here first, so a bad
    bundle fails the deploy with its reason instead of replicas failing one by one."""
    bundle = Path(args.bundle).resolve()
    manifest = verify_bundle(bundle)
    if args.policy is not None:
        Policy.model_validate(args.policy)
    token = args.token.get_secret_value() if args.token else os.environ.get(TOKEN_ENV)
    # Resolved here, where relative paths mean what the deployer meant: every replica
    # writes into the same directory whatever its working directory.
    decisions_dir = Path(args.decisions.directory).resolve() if args.decisions.directory else \
        default_directory_for_bundle(bundle, manifest)
    decisions = args.decisions.model_copy(update={"directory": str(decisions_dir)})
    config = args.model_copy(update={"bundle": str(bundle), "token": SecretStr(token) if token else None,
                                     "decisions": decisions})
    scaling: dict[str, Any] = (
        {"autoscaling_config": config.autoscaling.model_dump()} if config.autoscaling
        else {"num_replicas": config.resolved_num_replicas(cluster_resources())}
    )
    return ClassifierDeployment.options(
        name="classifier",
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus_per_replica, "num_gpus": config.num_gpus_per_replica},
        user_config=config.user_config(),
        **scaling,
    ).bind(config)


# Settings that Serve changes on running replicas: user_config (through reconfigure)
# and the replica count / concurrency. Everything else is a builder argument, and a
# changed argument makes Serve rebuild the application.
USER_CONFIG_FIELDS = ("policy", "top_k", "max_batch_size", "batch_wait_timeout_s")
LISTEN_FIELDS = ("host", "port")


def serve_deploy_config(configs: list[ServeConfig], include_token: bool = True) -> dict[str, Any]:
    """A Serve config file (ServeDeploySchema) for these apps: what `serve deploy` takes.

    The policy, top-k and batching sit in the deployment's `user_config`, not in the
    builder's args, so redeploying with only those changed reaches the running replicas
    through `reconfigure` instead of rebuilding the app."""
    if len({(c.host, c.port) for c in configs}) > 1:
        raise ValueError("every application of one Serve instance listens on the same host and port")
    applications = []
    for config in configs:
        args = config.model_dump(mode="json", exclude=set(USER_CONFIG_FIELDS) | set(LISTEN_FIELDS) | {"token"})
        if include_token and config.token is not None:
            args["token"] = config.token.get_secret_value()
        deployment: dict[str, Any] = {"name": "classifier", "user_config": config.user_config(),
                                      "max_ongoing_requests": config.max_ongoing_requests}
        if config.autoscaling is not None:
            deployment["autoscaling_config"] = config.autoscaling.model_dump()
        else:
            deployment["num_replicas"] = config.resolved_num_replicas(cluster_resources())
        applications.append({"name": config.app_name, "route_prefix": config.route_prefix,
                             "import_path": "serve.app:build_app", "args": args, "deployments": [deployment]})
    return {"http_options": {"host": configs[0].host, "port": configs[0].port}, "applications": applications}

