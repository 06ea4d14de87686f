"""PEFT mode without Ray: adapters on tiny ViT / DINOv2 / BERT backbones, what trains,
merging into plain weights, trainable-only checkpoints."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from ray_app.config import load_config
from ray_app.errors import ConfigError
from tests.helpers.configs import REPO, SMOKE
from trainers.adapters import PeftSetup, PeftSetupError, check_peft_setup, merge_adapters, plan_adapters
from trainers.checkpoint import PEFT_SETUP_FILE, load_checkpoint, save_checkpoint, selected_model
from trainers.config import BackboneConfig, ModelConfig, PeftConfig, TrainingConfig
from trainers.model import build_backbone, build_classifier, load_classifier, save_classifier
from trainers.optim import param_groups

TINY = {"image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 32, "num_attention_heads": 2}
TINY_VIT = {"model_type": "vit", **TINY, "num_hidden_layers": 2, "intermediate_size": 64}
TINY_DINOV2 = {"model_type": "dinov2", **TINY, "num_hidden_layers": 2, "mlp_ratio": 2}
TINY_BERT = {
    "model_type": "bert", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32,
}
BACKBONES = {"vit": TINY_VIT, "dinov2": TINY_DINOV2, "bert": TINY_BERT}
# Where each family keeps its blocks, and the Linear layers of one block (transformers 5).
BLOCKS = {"vit": "layers", "dinov2": "encoder.layer", "bert": "encoder.layer"}
VIT_LINEARS = ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"]
BERT_LINEARS = [
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense",
]
NUM_LABELS = 3


def model_cfg(backbone: dict = TINY_VIT) -> ModelConfig:
    return ModelConfig.model_validate({"backbone": {"config": backbone}})


def setup(backbone: dict = TINY_VIT, seed: int = 0, **peft: object) -> PeftSetup:
    return PeftSetup(model_cfg(backbone), PeftConfig.model_validate({"r": 4, **peft}), NUM_LABELS, seed)


def inputs(backbone: dict, batch: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if backbone["model_type"] == "bert":
        ids = torch.randint(5, backbone["vocab_size"], (batch, 7), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=generator)}


def train_steps(model: nn.Module, batch: dict[str, torch.Tensor], steps: int = 3) -> None:
    labels = torch.arange(len(next(iter(batch.values())))) % NUM_LABELS
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(**batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def changed_names(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def is_adapter(name: str) -> bool:
    return ".lora_" in name


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.eval()(**batch)


# --- what trains ------------------------------------------------------------------------


def test_without_unfrozen_blocks_only_adapters_and_head_change() -> None:
    model = setup().build()
    before = snapshot(model)
    train_steps(model, inputs(TINY_VIT))
    changed = changed_names(before, model)
    assert changed == trainable_names(model)  # every trainable tensor moved, nothing else did
    assert changed == {n for n in changed if is_adapter(n)} | {"head.weight", "head.bias"}
    assert len([n for n in changed if is_adapter(n)]) == 2 * 2 * 6  # A and B, 2 blocks x 6 Linears


@pytest.mark.parametrize("unfrozen", [1, 2])
def test_explora_trains_exactly_the_last_blocks_in_full(unfrozen: int) -> None:
    backbone = {**TINY_VIT, "num_hidden_layers": 3}
    model = setup(backbone, unfreeze_last_blocks=unfrozen).build()
    before = snapshot(model)
    train_steps(model, inputs(backbone))
    changed = changed_names(before, model)
    assert changed == trainable_names(model)

    def block_of(name: str) -> int | None:
        parts = name.split(".")
        return int(parts[parts.index("layers") + 1]) if "layers" in parts else None

    full_blocks = {block_of(n) for n in changed if not is_adapter(n) and n.startswith("backbone.")}
    assert full_blocks == set(range(3 - unfrozen, 3))
    assert {block_of(n) for n in changed if is_adapter(n)} == set(range(3 - unfrozen))
    every_param_of_last_blocks = {
        n for n in before if n.startswith("backbone.") and (block_of(n) or -1) >= 3 - unfrozen
    }
    assert every_param_of_last_blocks <= changed
    # the earlier blocks' base weights, the embeddings and the final norm stay as built
    assert not any("base_layer" in n or "embeddings" in n or "model.layernorm" in n for n in changed)


@pytest.mark.parametrize("family", ["vit", "dinov2", "bert"])
@pytest.mark.parametrize("unfrozen", [0, 1])
def test_trainable_count_is_what_lora_predicts(family: str, unfrozen: int) -> None:
    r = 4
    plain = build_backbone(BackboneConfig(config=BACKBONES[family]))
    blocks = plain.get_submodule(BLOCKS[family])
    adapted, full = blocks[: len(blocks) - unfrozen], blocks[len(blocks) - unfrozen :]
    lora = sum(r * (m.in_features + m.out_features) for b in adapted for m in b.modules() if isinstance(m, nn.Linear))
    head = 32 * NUM_LABELS + NUM_LABELS
    unfrozen_blocks = sum(p.numel() for b in full for p in b.parameters())

    model = setup(BACKBONES[family], r=r, unfreeze_last_blocks=unfrozen).build()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora + head + unfrozen_blocks


def test_base_is_drawn_from_the_setup_seed_not_the_global_rng() -> None:
    torch.manual_seed(1)
    a = setup(seed=5).build().state_dict()
    torch.manual_seed(2)
    b = setup(seed=5).build().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = setup(seed=6).build().state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- choosing modules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "expected"), [("vit", VIT_LINEARS), ("dinov2", VIT_LINEARS), ("bert", BERT_LINEARS)]
)
def test_auto_targets_the_attention_and_mlp_projections(family: str, expected: list[str]) -> None:
    backbone = build_backbone(BackboneConfig(config=BACKBONES[family]))
    plan = plan_adapters(backbone, PeftConfig())
    assert plan.blocks.path == BLOCKS[family] and plan.blocks.count == 2
    assert plan.target_modules == expected
    assert plan.targeted == [f"{BLOCKS[family]}.{i}.{name}" for i in (0, 1) for name in expected]
    # the driver's check reads the same plan from a meta-device skeleton (no weights)
    assert check_peft_setup(model_cfg(BACKBONES[family]), PeftConfig()) == plan


def test_explicit_targets_are_matched_as_peft_does() -> None:
    model = setup(TINY_BERT, target_modules=["query", "value"]).build()
    adapted = sorted(model.backbone.base_model.targeted_module_names)
    assert adapted == [f"encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "value")]


@pytest.mark.parametrize(
    ("backbone", "targets", "listed"),
    [
        (TINY_VIT, ["qkv"], ["q_proj", "fc1", "attention.o_proj"]),
        (TINY_BERT, ["q_proj", "query"], ["query", "dense", "attention.output.dense"]),
        (TINY_VIT, ["attention"], ["q_proj"]),  # a module, but not a Linear layer
    ],
)
def test_targets_that_match_nothing_name_the_layers_that_exist(backbone: dict, targets: list, listed: list) -> None:
    with pytest.raises(PeftSetupError, match="match no Linear layer") as info:
        setup(backbone, target_modules=targets).build()
    message = str(info.value)
    assert str([t for t in targets if t not in ("query",)]) in message  # only the unmatched ones
    assert all(name in message for name in listed)
    with pytest.raises(PeftSetupError, match="match no Linear layer"):
        check_peft_setup(model_cfg(backbone), PeftConfig(target_modules=targets))


def test_unfreezing_every_block_is_refused() -> None:
    with pytest.raises(PeftSetupError, match="leaves no block for adapters.*at most 1"):
        setup(unfreeze_last_blocks=2).build()


def test_peft_config_validation() -> None:
    for bad in ({"r": 0}, {"r": -2}, {"unfreeze_last_blocks": -1}, {"target_modules": []},
                {"method": "ia3"}, {"dropout": 1.0}, {"alpha": 0}):
        with pytest.raises(ValidationError):
            PeftConfig.model_validate(bad)
    assert TrainingConfig().peft is None
    assert TrainingConfig.model_validate({"mode": "peft"}).peft == PeftConfig()  # defaults, recorded
    with pytest.raises(ValidationError, match="training.peft applies to training.mode: peft only"):
        TrainingConfig.model_validate({"mode": "baseline", "peft": {"r": 4}})
    with pytest.raises(ConfigError, match="freeze_backbone.*choose one"):
        load_config(SMOKE, ["training.mode=peft", "model.freeze_backbone=true"])
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["training.mode=peft", "training.peft.r=0", "training.peft.rr=4",
                            "training.peft.target_modules=q_proj"])
    assert sorted(info.value.problems) == [
        "training.peft.r: Input should be greater than 0 (got 0)",
        "training.peft.rr: unknown key; did you mean 'r'?",
        "training.peft.target_modules: use auto or a list of module names, e.g. [q_proj, v_proj] (got 'q_proj')",
    ]


# --- merging and export -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "loha", "lokr"])
def test_merged_model_gives_the_unmerged_logits(method: str) -> None:
    model = setup(method=method, unfreeze_last_blocks=1).build()
    batch = inputs(TINY_VIT)
    untrained = logits(model, batch)
    train_steps(model, batch)
    unmerged = logits(model, batch)
    assert not torch.allclose(unmerged, untrained, atol=1e-3)  # the adapters did something
    merged = merge_adapters(copy.deepcopy(model))
    assert isinstance(merged.backbone, PreTrainedModel)
    assert set(merged.state_dict()) == set(build_classifier(model_cfg(), NUM_LABELS).state_dict())
    torch.testing.assert_close(logits(merged, batch), unmerged, atol=1e-4, rtol=1e-4)


def test_saved_merged_classifier_loads_without_peft(tmp_path: Path) -> None:
    model = setup(TINY_BERT, unfreeze_last_blocks=1).build()
    batch = inputs(TINY_BERT)
    train_steps(model, batch)
    expected = logits(model, batch)
    with pytest.raises(ValueError, match="merge the adapters first"):
        save_classifier(model, model_cfg(TINY_BERT), ["a", "b", "c"], tmp_path / "m", extra={})
    save_classifier(merge_adapters(model), model_cfg(TINY_BERT), ["a", "b", "c"], tmp_path / "m", extra={})
    loaded, _ = load_classifier(tmp_path / "m")
    torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-4, rtol=1e-4)

    # In a process where peft cannot be imported at all, as in a bundle or a Serve replica.
    save_file(batch, str(tmp_path / "batch.safetensors"))
    script = (
        "import sys; sys.modules['peft'] = None\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from trainers.model import load_classifier\n"
        "model, _ = load_classifier(Path(sys.argv[1]))\n"
        "with torch.no_grad():\n"
        "    save_file({'logits': model(**load_file(sys.argv[2]))}, sys.argv[3])\n"
    )
    files = [str(tmp_path / name) for name in ("m", "batch.safetensors", "out.safetensors")]
    subprocess.run([sys.executable, "-c", script, *files], cwd=REPO, check=True, capture_output=True, timeout=120)
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["logits"], expected, atol=1e-4, rtol=1e-4)


# --- checkpoints ----------------------------------------------------------------------------


def test_peft_checkpoint_holds_only_trainable_tensors_and_restores(tmp_path: Path) -> None:
    peft_setup = setup(seed=7, unfreeze_last_blocks=1)
    batch = inputs(TINY_VIT)

    def parts(model: nn.Module):
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=0.01)
        return ema, optimizer, get_cosine_schedule_with_warmup(optimizer, 1, 10)

    model = peft_setup.build()
    ema, optimizer, scheduler = parts(model)
    labels = torch.arange(6) % NUM_LABELS
    model.train()
    for _ in range(3):
        F.cross_entropy(model(**batch), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        ema.update_parameters(model)
    save_checkpoint(tmp_path, model, ema, optimizer, scheduler, {"epoch": 3}, peft_setup)

    assert set(load_file(tmp_path / "model.safetensors")) == trainable_names(model)
    ema_keys = {f"module.{n}" for n in trainable_names(model)} | {"n_averaged"}  # n_averaged: the EMA's step count
    assert set(load_file(tmp_path / "ema.safetensors")) == ema_keys
    assert (tmp_path / PEFT_SETUP_FILE).is_file()

    torch.manual_seed(123)  # another global RNG state: the base must come from the setup
    fresh = PeftSetup.from_json((tmp_path / PEFT_SETUP_FILE).read_text()).build()
    fresh_ema, fresh_optimizer, fresh_scheduler = parts(fresh)
    assert load_checkpoint(tmp_path, fresh, fresh_ema, fresh_optimizer, fresh_scheduler)["epoch"] == 3
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(fresh, batch), logits(model, batch))
    assert int(fresh_ema.n_averaged) == 3 and fresh_scheduler.get_last_lr() == scheduler.get_last_lr()

    # What the pipeline saves: merged into a plain classifier it builds itself.
    for use_ema, reference in ((False, model), (True, ema.module)):
        chosen = selected_model(tmp_path, build_classifier(model_cfg(), NUM_LABELS), use_ema=use_ema)
        assert isinstance(chosen.backbone, PreTrainedModel)
        torch.testing.assert_close(logits(chosen, batch), logits(reference, batch), atol=1e-4, rtol=1e-4)

    other = setup(seed=7, unfreeze_last_blocks=0).build()  # a different set of trainable tensors
    with pytest.raises(ValueError, match="does not fit this model's trainable parameters"):
        load_checkpoint(tmp_path, other, None, *parts(other)[1:])
