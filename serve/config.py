"""Typed settings of the Serve application: where it listens, how it batches and
scales, what it accepts, and the policy override applied through `reconfigure`.

`ServeConfig` is also the argument model of the importable app builder
(`serve.app:build_app`), so `serve run` / `serve deploy` config files are validated by
the same rules as `ray-app serve`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from trainers.schema import StrictModel

TOKEN_ENV = "RAY_APP_SERVE_TOKEN"


class AutoscalingSettings(StrictModel):
    min_replicas: int = Field(default=1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(default=4, ge=1, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(
        default=16.0,
        gt=0.0,
        description="Ongoing requests per replica the autoscaler aims for; with batching, "
        "about the batch size keeps batches full without queueing too long.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must be <= autoscaling.max_replicas")
        return self


class DecisionRecording(StrictModel):
    """The record of every answer (`serve.decisions`): where it goes, how often it is
    written, what it keeps and for how long."""

    enabled: bool = Field(
        default=True,
        description="Append every answer (request id, time, model version, label, calibrated top-k, "
        "confidence, decision, policy) to the decision store, off the request path.",
    )
    directory: str | None = Field(
        default=None,
        description="Directory of the store (one SQLite file per replica). null: <runs root>/decisions/<run> "
        "for a bundle at <runs root>/<run>/bundle (the run's name from bundle.json), resolved when the app "
        "is built. Set it when the bundle lives outside a runs root. On a cluster it must be storage every "
        "replica's node can write.",
    )
    flush_interval_s: float = Field(
        default=1.0,
        gt=0.0,
        le=60.0,
        description="Queued answers are written in one transaction at least this often (and on a clean "
        "shutdown). A crashed replica loses at most the answers of its last interval.",
    )
    keep_abstain_inputs: bool = Field(
        default=True,
        description="Keep the input (text, image bytes or pixels) of abstain answers for review; assist "
        "answers always keep theirs, accept answers only in the audit sample (audit_rate).",
    )
    audit_rate: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Share of accept answers that keep their input too, for a person to check: the audit "
        "sample. Chosen by a hash of (request id, input index), so every replica and a replay pick the same "
        "answers (a client that sends its own x-request-id should make it unique per request, as Serve's are). A random sample of accepted answers measures their accuracy without bias, which the "
        "estimate from calibrated confidences cannot do once inputs drift onto confident mistakes. 0: none.",
    )
    max_age_days: float = Field(
        default=30.0, gt=0.0, description="Answers older than this are deleted (checked every retention_check_s)."
    )
    max_size_mb: float = Field(
        default=1024.0,
        gt=0.0,
        description="Size limit of the whole store directory (every replica's file); over it, the oldest "
        "answers are deleted until it is 90% full.",
    )
    retention_check_s: float = Field(
        default=60.0,
        ge=0.0,
        description="How often a replica applies max_age_days and max_size_mb, during a flush (0: at every "
        "flush). Between checks the store can outgrow max_size_mb by what arrives in the meantime.",
    )
    max_queued_requests: int = Field(
        default=10_000,
        ge=1,
        description="Requests whose answers may wait in memory for the writer. When the disk cannot keep "
        "up, further answers are counted as dropped (GET /metadata) instead of growing memory without bound.",
    )


class ServeConfig(StrictModel):

    bundle: str = Field(description="Bundle directory (runs/<name>/bundle) to serve.")
    host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP proxy binds to. Loopback by default; 0.0.0.0 exposes "
        "the endpoint to the network, so set a token then.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field(default="/", description="Path prefix the app is mounted at.")
    app_name: str = Field(default="ray-app", description="Serve application name.")
    token: SecretStr | None = Field(
        default=None,
        description=f"Bearer token every request must carry. Unset: read from ${TOKEN_ENV}; "
        "if that is unset too, no token is required.",
    )
    max_batch_size: int = Field(
        default=32, ge=1, description="Inputs per model forward; inputs from different callers share a batch."
    )
    batch_wait_timeout_s: float = Field(
        default=0.005,
        ge=0.0,
        description="How long a partial batch waits for more inputs before it runs.",
    )
    max_ongoing_requests: int = Field(
        default=64,
        ge=1,
        description="Requests one replica handles at once. Must be >= max_batch_size, or "
        "a replica can never gather a full batch from separate single-input callers.",
    )
    num_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Fixed replica count (ignored when autoscaling is set). null: one replica per "
        "num_cpus_per_replica CPUs of the Ray cluster (per num_gpus_per_replica GPUs when on GPU), "
        "read when the app is deployed. Several single-thread replicas beat one multi-thread replica "
        "on CPU: each parses its own requests in parallel, and small forwards scale poorly across "
        "threads. Set it when the cluster's CPUs are shared with other work or other apps.",
    )
    autoscaling: AutoscalingSettings | None = Field(
        default=None, description="Scale replicas on ongoing requests instead of a fixed count."
    )
    num_cpus_per_replica: float = Field(default=1.0, gt=0.0, description="CPUs reserved per replica.")
    num_gpus_per_replica: float = Field(
        default=0.0,
        ge=0.0,
        description="GPUs per replica (0: CPU inference). Above 0 the model and its inputs go to the "
        "replica's GPU; a fraction lets several replicas share one.",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads per replica. null: the CPUs the replica reserves "
        "(num_cpus_per_replica, rounded down, at least 1), so a replica neither idles the cores it "
        "holds nor competes for cores it does not.",
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32",
        description="Weights and activations of the forward pass. fp16 needs a GPU "
        "(num_gpus_per_replica > 0); bf16 also runs on CPUs, fast only on those with bf16 "
        "instructions. The policy was calibrated on fp32 logits: check it holds at lower precision.",
    )
    text_chunk_size: int | None = Field(
        default=None,
        ge=1,
        description="Text models: a batch is sorted by token count and run as forward passes of "
        "this many texts, each padded to its own longest text, so short texts do not pay for long "
        "ones. null: 8 on CPU, where 8 texts already keep the cores busy, and the whole batch on GPU, "
        "where one larger pass is cheaper than several.",
    )
    max_inputs_per_request: int = Field(
        default=256, ge=1, description="Inputs one POST /predict may carry; more gets a 422."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger gets a 413."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="Largest decoded image (width x height) accepted, so a small compressed "
        "upload cannot expand into gigabytes.",
    )
    top_k: int = Field(default=3, ge=1, description="Calibrated probabilities returned per input (capped at the class count).")
    policy: dict[str, Any] | None = Field(
        default=None,
        description="Policy to use instead of the bundle's policy.json (same fields: "
        "temperature, rule, threshold, center, width). Changing it on a running app goes "
        "through user_config / reconfigure, without restarting replicas.",
    )

    decisions: DecisionRecording = Field(
        default_factory=DecisionRecording,
        description="Recording every answer for review and monitoring (serve/decisions.py). A builder "
        "argument: changing it restarts the replicas.",
    )

    @model_validator(mode="after")
    def _batching_fits_concurrency(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}): a replica only batches requests it has accepted"
            )
        if self.precision == "fp16" and self.num_gpus_per_replica == 0:
            raise ValueError(
                "precision fp16 needs a GPU (num_gpus_per_replica > 0): CPU kernels for fp16 are slow or "
                "missing; use bf16 or fp32 on CPU"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError("route_prefix must start with '/'")
        return self

    def resolved_num_replicas(self, cluster_resources: dict[str, float]) -> int:
        """Replicas to run on a cluster with these resources (see `num_replicas`)."""
        if self.num_replicas is not None:
            return self.num_replicas
        if self.num_gpus_per_replica > 0:
            return max(1, int(cluster_resources.get("GPU", 0.0) // self.num_gpus_per_replica))
        return max(1, int(cluster_resources.get("CPU", 1.0) // self.num_cpus_per_replica))

    def resolved_torch_threads(self) -> int:
        """torch intra-op threads a replica uses (see `torch_threads`)."""
        return self.torch_threads or max(1, int(self.num_cpus_per_replica))

    def resolved_text_chunk_size(self, on_gpu: bool) -> int | None:
        """Texts per forward pass (see `text_chunk_size`); None: the whole batch."""
        if self.text_chunk_size is not None:
            return self.text_chunk_size
        return None if on_gpu else 8

    def user_config(self) -> dict[str, Any]:
        """What `reconfigure` receives: the settings that change without a restart."""
        return {
            "policy": self.policy,
            "top_k": self.top_k,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
        }
