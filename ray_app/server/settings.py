"""Typed settings of the control plane (`ray-app server` flags, or keyword arguments of
`create_app` when it is embedded elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

SERVER_TOKEN_ENV = "RAY_APP_SERVER_TOKEN"
SERVER_URL_ENV = "RAY_APP_SERVER"
DEFAULT_PORT = 8080


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

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

    @model_validator(mode="after")
    def _resolve(self) -> ServerSettings:
        self.runs_root = self.runs_root.expanduser().resolve()
        if self.templates_root is None:
            self.templates_root = self.runs_root.parent / "templates"
        self.templates_root = self.templates_root.expanduser().resolve()
        if self.presets_root is None and Path("configs").is_dir():
            self.presets_root = Path("configs")
        if self.presets_root is not None:
            self.presets_root = self.presets_root.expanduser().resolve()
        if self.token is None and os.environ.get(SERVER_TOKEN_ENV):
            self.token = SecretStr(os.environ[SERVER_TOKEN_ENV])
        return self

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
