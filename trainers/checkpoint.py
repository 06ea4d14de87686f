"""Training checkpoints: weights as safetensors, optimizer/scheduler as tensor-only
torch files (loaded with weights_only=True), loop state as JSON. No pickle on load.

A PEFT checkpoint (training.mode: peft) holds only the trainable tensors (adapters,
unfrozen blocks, head) plus `peft_setup.json`, from which the frozen base is rebuilt
exactly (trainers.adapters.PeftSetup). `selected_model` merges such a checkpoint into
a plain classifier, so nothing after training needs peft.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.optim.swa_utils import AveragedModel

from trainers.adapters import PeftSetup, merge_adapters

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
PEFT_SETUP_FILE = "peft_setup.json"


# --- trainable-only weights ---------------------------------------------------------------


def frozen_parameter_names(module: nn.Module) -> set[str]:
    # remove_duplicate=False: a tied (shared) frozen weight appears in state_dict under
    # each of its names, and each must be left out.
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict without the frozen parameters: trainable parameters and buffers
    (an AveragedModel's n_averaged; transformers encoders keep no persistent buffers)."""
    frozen = frozen_parameter_names(module)
    return {k: v.detach().contiguous() for k, v in module.state_dict().items() if k not in frozen}


def save_trainable(module: nn.Module, path: Path) -> None:
    save_file(trainable_state(module), str(path))


def load_trainable(module: nn.Module, path: Path) -> None:
    """Load a trainable-only file: it must restore every trainable tensor and nothing
    else, or it was written by a different setup."""
    result = module.load_state_dict(load_file(str(path)), strict=False)
    missing = set(result.missing_keys) - frozen_parameter_names(module)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit this model's trainable parameters: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]} (a checkpoint of another peft setup?)"
        )


def read_peft_setup(directory: Path) -> PeftSetup | None:
    path = directory / PEFT_SETUP_FILE
    return PeftSetup.from_json(path.read_text()) if path.is_file() else None


# --- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    peft_setup: PeftSetup | None = None,
) -> None:
    """With `peft_setup` (PEFT mode) only the trainable tensors are written: the frozen
    base is rebuilt from the setup, and storing it every epoch would cost the backbone's
    full size for nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights = save_model if peft_setup is None else save_trainable
    save_weights(model, directory / MODEL_FILE)
    if ema_model is not None:
        save_weights(ema_model, directory / EMA_FILE)
    if peft_setup is not None:
        (directory / PEFT_SETUP_FILE).write_text(peft_setup.to_json())
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))


def _load_weights(module: nn.Module, path: Path, trainable_only: bool) -> None:
    if trainable_only:
        load_trainable(module, path)
    else:
        load_model(module, str(path))


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    ema_model: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Resume: `model` (and `ema_model`) are built the way the checkpoint's run built
    them; for a PEFT checkpoint that is PeftSetup.build(), which restores the base."""
    trainable_only = read_peft_setup(directory) is not None
    _load_weights(model, directory / MODEL_FILE, trainable_only)
    if ema_model is not None:
        _load_weights(ema_model, directory / EMA_FILE, trainable_only)
    states = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return read_state(directory)


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE_FILE).read_text())


def selected_model(directory: Path, model: nn.Module, use_ema: bool) -> nn.Module:
    """The weights that were validated: the EMA copy when EMA was on. The EMA file
    holds a whole AveragedModel (its step count too, so a resumed run keeps averaging).

    `model` is a plain classifier of the run's architecture. A PEFT checkpoint is
    rebuilt from its setup, its adapters merged, and the merged plain weights loaded
    into `model`: what is saved and served from it needs no peft."""
    peft_setup = read_peft_setup(directory)
    chosen = model if peft_setup is None else peft_setup.build()
    trainable_only = peft_setup is not None
    if use_ema:
        averaged = AveragedModel(chosen, use_buffers=True)
        _load_weights(averaged, directory / EMA_FILE, trainable_only)
        chosen = averaged.module
    else:
        _load_weights(chosen, directory / MODEL_FILE, trainable_only)
    if peft_setup is None:
        return chosen
    model.load_state_dict(merge_adapters(chosen).state_dict())
    return model
