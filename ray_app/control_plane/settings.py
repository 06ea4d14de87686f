"""Typed settings of the control plane (`ray-app server` flags, or keyword arguments of
`create_app` when it is embedded elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from calibration.monitor import DEFAULT_DRIFT_P, DEFAULT_DRIFT_PSI
from trainers.schema import StrictModel

SERVER_TOKEN_ENV = "RAY_APP_SERVER_TOKEN"
SERVER_URL_ENV = "RAY_APP_SERVER"
DEFAULT_PORT = 8080


class ServerSettings(StrictModel):
    runs_root: Path = Field(
        default=Path("runs"),
        description="Directory holding the runs (runs/<name>/). Runs launched through the server "
        "train here; on a multi-node cluster it must be storage every node sees at the same path.",
    )
    templates_root: Path | None = Field(
        default=None,
        description="Directory of template YAML files. Default: 'templates' next to the runs root.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Job server of the Ray cluster runs are submitted to (its dashboard address, "
        "e.g. http://head:8265). Unset: the server starts a local Ray head of its own.",
    )
    ray_jobs: bool = Field(
        default=True,
        description="Launch, stop and rerun runs as Ray jobs. False: no Ray at all (no local head, no "
        "job server connection); listing, metrics, logs, templates and families are served from the runs "
        "root, and launch, stop and rerun answer 503.",
    )
    local_ray_cpus: int | None = Field(
        default=None, ge=1, description="Logical CPUs of the local Ray head (default: this machine's cores)."
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on. Loopback by default; anything else exposes the service, so "
        "set a token then.",
    )
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="HTTP port.")
    token: SecretStr | None = Field(
        default=None,
        description=f"Bearer token every API request must carry. Unset: read from ${SERVER_TOKEN_ENV}; "
        "if that is unset too, no token is required.",
    )
    presets_root: Path | None = Field(
        default=None,
        description="Directory of YAML config presets offered as starting points in the launch form. "
        "Default: ./configs when it exists (a checkout of ray-app), else none.",
    )
    index_refresh_s: float = Field(
        default=2.0, gt=0.0, description="How often the run index picks up runs changed on disk (seconds)."
    )
    job_poll_s: float = Field(
        default=1.0, gt=0.0, description="How often the state of active Ray jobs is polled (seconds)."
    )
    ray_timeout_s: float = Field(
        default=10.0, gt=0.0, le=600.0,
        description="Longest wait for one answer of the Ray job server (connecting, submitting, a job's state, "
        "a stop): past it the request fails with 503 saying why, instead of hanging.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024,
        description="Largest request body the API reads (bytes); a larger one is answered 413 before it is read.",
    )
    drift_psi: float = Field(
        default=DEFAULT_DRIFT_PSI, gt=0.0, le=10.0,
        description="The monitor flags drift when a population stability index (of the served model's calibrated "
        "confidences against val_calib's, or of its predicted classes against val_test's) exceeds this and the "
        "matching test rejects at drift_p. 0.1 reads as a moderate shift, 0.25 as a large one. A request's "
        "drift_psi query parameter overrides it for that request.",
    )
    drift_p: float = Field(
        default=DEFAULT_DRIFT_P, gt=0.0, lt=1.0,
        description="Significance level of the monitor's drift tests (Kolmogorov-Smirnov on confidences, "
        "chi-square on predicted classes); both this and drift_psi must be passed to flag drift.",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """What is left unset comes from its neighbours: the templates next to the runs
        root, ./configs as presets in a checkout of ray-app, the token from the
        environment."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("templates_root") is None:
            data["templates_root"] = Path(data.get("runs_root") or "runs").expanduser().resolve().parent / "templates"
        if data.get("presets_root") is None and Path("configs").is_dir():
            data["presets_root"] = Path("configs")
        if data.get("token") is None and os.environ.get(SERVER_TOKEN_ENV):
            data["token"] = os.environ[SERVER_TOKEN_ENV]
        return data

    @field_validator("runs_root", "templates_root", "presets_root")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None

    @property
    def index_path(self) -> Path:
        return self.runs_root / ".index.sqlite"

    @property
    def launches_dir(self) -> Path:
        """Resolved configs of launched jobs: the file each job's `ray-app run` reads."""
        return self.runs_root / ".launches"
