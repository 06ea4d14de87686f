"""Training checkpoints: weights as safetensors, optimizer/scheduler as tensor-only
torch files (loaded with weights_only=True), loop state as JSON. No pickle on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MODEL_FILE))
    if ema_model is not None:
        save_model(ema_model, str(directory / EMA_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    load_model(model, str(directory / MODEL_FILE))
    if ema_model is not None:
        load_model(ema_model, str(directory / EMA_FILE))
    states = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return read_state(directory)


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE_FILE).read_text())


def selected_model(directory: Path, model: nn.Module, use_ema: bool) -> nn.Module:
    """The weights that were validated: the EMA copy when EMA was on. The EMA file
    holds a whole AveragedModel (its step count too, so a resumed run keeps averaging)."""
    if not use_ema:
        load_model(model, str(directory / MODEL_FILE))
        return model
    from torch.optim.swa_utils import AveragedModel

    averaged = AveragedModel(model, use_buffers=True)
    load_model(averaged, str(directory / EMA_FILE))
    return averaged.module
