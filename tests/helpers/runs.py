"""Synthetic run directories, written as the pipeline writes them (config.yaml,
metadata.json, metrics, a log), for tests of what reads runs without training one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ray_app.config import load_config
from tests.helpers.configs import SMOKE

COMPLETE = {s: {"status": "complete"} for s in ("splits", "calibrate", "insights", "export")}


def make_run(root: Path, name: str, *, accuracy: float | None = 0.8, status: str = "complete",
             family_overrides: list[str] | None = None, epochs: int = 3, log: str | None = None,
             created: str = "2026-11-01T00:00:00+00:00") -> Path:
    run = root / name
    (run / "train").mkdir(parents=True)
    cfg = load_config(SMOKE, [f"storage.root={root}", *(family_overrides or [])])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.resolved_dict(), sort_keys=False))
    stages: dict[str, Any] = dict(COMPLETE)
    stages["train"] = {"status": status, "epochs_run": epochs, "best_epoch": epochs - 1,
                       "best": {"val_select/accuracy": accuracy, "val_select/loss": 1.0, "val_select/macro_f1": 0.5},
                       "error": "RuntimeError: boom" if status == "failed" else None}
    stages["evaluate"] = {"status": "complete", "accuracy": (accuracy or 0) - 0.05, "coverage": 0.7}
    (run / "metadata.json").write_text(json.dumps({"name": name, "created": created, "stages": stages}))
    (run / "train" / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train/loss": 2.0 - e / 10, "val_select/accuracy": 0.5 + e / 100}) + "\n"
        for e in range(epochs)
    ))
    if log is not None:
        (run / "logs").mkdir()
        (run / "logs" / "run.log").write_text(log)
    return run
