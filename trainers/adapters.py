"""PEFT mode: adapters from the `peft` library on the backbone, the head trained in full.

- The encoder blocks are found in the loaded backbone itself (`layers` on ViT,
  `encoder.layer` on DINOv2 and BERT, `model.layer` on DINOv3), so no per-family
  table of module names is needed.
- `target_modules: auto` puts adapters on every Linear layer inside a block, named by
  its path within the block: the attention and MLP projections of a transformer
  encoder (attention.q_proj ... mlp.fc2 on ViT, attention.self.query ... output.dense
  on BERT).
- ExPLoRA: with `unfreeze_last_blocks: N` the adapters go on the first L - N blocks
  (peft's `layers_to_transform`) and the last N blocks are trained in full.
- `PeftSetup` is everything that determines the PEFT classifier, seed included: a
  checkpoint holds the trainable tensors only, and the frozen base of a backbone built
  from a config dict is random, so a resumed worker or the driver must draw the
  identical base from the seed.
- `merge_adapters` folds the adapters into the backbone's weights (merge_and_unload):
  the exported model has plain transformers module names and loads without peft.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import peft
import torch
from torch import nn

from trainers.config import ModelConfig, PeftConfig
from trainers.model import Classifier, InitBackbone, backbone_skeleton, build_initial_classifier


class PeftSetupError(ValueError):
    """The adapters cannot be placed as configured (a target module that does not
    exist, more unfrozen blocks than the backbone has). A problem the user fixes in the
    config: the message says what exists."""


@dataclass(frozen=True)
class EncoderBlocks:
    """Where the backbone keeps its transformer blocks."""

    path: str  # e.g. "encoder.layer": a ModuleList of `count` blocks
    count: int

    @property
    def layers_pattern(self) -> str:
        """The ModuleList's own name: what peft's `layers_pattern` matches in front of
        the block index (`encoder.layer.3.` -> "layer")."""
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AdapterPlan:
    """Which modules get adapters and which blocks are trained in full."""

    blocks: EncoderBlocks
    target_modules: list[str]  # the names given to peft (matched as path suffixes)
    adapter_blocks: list[int]  # block indices with adapters (peft's layers_to_transform)
    targeted: list[str]  # full module paths that get an adapter
    unfrozen_blocks: list[str]  # full paths of the blocks trained in full

    def describe(self) -> str:
        unfrozen = ", ".join(self.unfrozen_blocks) or "none"
        return (
            f"adapters on {len(self.targeted)} Linear layers ({', '.join(self.target_modules)}) "
            f"in {block_span(self.blocks, len(self.adapter_blocks))}; unfrozen blocks: {unfrozen}"
        )


def block_span(blocks: EncoderBlocks, count: int) -> str:
    """The first `count` blocks, for messages: "encoder.layer blocks 0-10"."""
    return f"{blocks.path} block 0" if count == 1 else f"{blocks.path} blocks 0-{count - 1}"


# --- finding modules ----------------------------------------------------------------


def find_encoder_blocks(backbone: nn.Module) -> EncoderBlocks:
    """The ModuleList of transformer blocks: the one with num_hidden_layers entries
    that holds Linear layers (the longest such list when the config does not say)."""
    candidates = [
        (name, len(module))
        for name, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and name and _has_linear(module)
    ]
    expected = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    exact = [c for c in candidates if c[1] == expected]
    if exact:
        candidates = exact
    if not candidates:
        raise PeftSetupError(
            f"found no encoder blocks (a list of layers holding Linear projections) in "
            f"{type(backbone).__name__}: peft mode needs a transformer encoder backbone"
        )
    path, count = max(candidates, key=lambda c: c[1])
    return EncoderBlocks(path=path, count=count)


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def linear_paths_in_blocks(backbone: nn.Module, blocks: EncoderBlocks) -> list[str]:
    """Distinct paths of the Linear layers relative to a block, in module order
    (e.g. attention.q_proj, ..., mlp.fc2): what `target_modules: auto` targets."""
    block_list = backbone.get_submodule(blocks.path)
    paths = (
        name for block in block_list for name, module in block.named_modules() if isinstance(module, nn.Linear)
    )
    return list(dict.fromkeys(paths))


def linear_leaf_names(backbone: nn.Module) -> list[str]:
    """Distinct last path components of all Linear layers (q_proj, dense, ...)."""
    linears = (name for name, module in backbone.named_modules() if isinstance(module, nn.Linear) and name)
    return sorted({name.rsplit(".", 1)[-1] for name in linears})


def _matches(path: str, target: str) -> bool:
    """peft's rule for a list of target_modules: the full path, or a suffix of it
    starting at a component boundary."""
    return path == target or path.endswith(f".{target}")


# --- planning -------------------------------------------------------------------------


def plan_adapters(backbone: nn.Module, peft_cfg: PeftConfig) -> AdapterPlan:
    """Decide what peft will adapt, and refuse a config that targets nothing."""
    blocks = find_encoder_blocks(backbone)
    if peft_cfg.unfreeze_last_blocks >= blocks.count:
        raise PeftSetupError(
            f"training.peft.unfreeze_last_blocks={peft_cfg.unfreeze_last_blocks} leaves no "
            f"block for adapters: the backbone has {blocks.count} blocks ({blocks.path}); use "
            f"at most {blocks.count - 1}, or training.mode: baseline to train every block"
        )
    adapter_blocks = list(range(blocks.count - peft_cfg.unfreeze_last_blocks))
    in_block = linear_paths_in_blocks(backbone, blocks)
    targets = in_block if peft_cfg.target_modules == "auto" else list(peft_cfg.target_modules)
    candidates = [f"{blocks.path}.{i}.{rel}" for i in adapter_blocks for rel in in_block]
    unmatched = [t for t in targets if not any(_matches(path, t) for path in candidates)]
    if unmatched:
        raise PeftSetupError(
            f"training.peft.target_modules {unmatched} match no Linear layer in "
            f"{block_span(blocks, len(adapter_blocks))} of {type(backbone).__name__}. Linear "
            f"layer names: {', '.join(linear_leaf_names(backbone))}; paths inside a block: "
            f"{', '.join(in_block)}"
        )
    return AdapterPlan(
        blocks=blocks,
        target_modules=targets,
        adapter_blocks=adapter_blocks,
        targeted=[path for path in candidates if any(_matches(path, t) for t in targets)],
        unfrozen_blocks=[f"{blocks.path}.{i}" for i in range(len(adapter_blocks), blocks.count)],
    )


def check_peft_setup(model_cfg: ModelConfig, peft_cfg: PeftConfig) -> AdapterPlan:
    """Raise PeftSetupError for a plan that cannot work. Run on the driver: inside a
    worker the same error would only fail every restart of the worker group."""
    if model_cfg.freeze_backbone:
        raise PeftSetupError(
            "model.freeze_backbone trains the head alone; it cannot be combined with training.mode: peft"
        )
    return plan_adapters(backbone_skeleton(model_cfg.backbone), peft_cfg)


# --- applying, merging -------------------------------------------------------------------


def adapter_config(peft_cfg: PeftConfig, plan: AdapterPlan) -> peft.PeftConfig:
    # layers_to_transform + layers_pattern keep adapters off the unfrozen blocks (and
    # off any Linear outside the blocks whose name happens to end like a target).
    placement: dict[str, Any] = {
        "r": peft_cfg.r,
        "target_modules": plan.target_modules,
        "layers_to_transform": plan.adapter_blocks,
        "layers_pattern": plan.blocks.layers_pattern,
    }
    if peft_cfg.method == "lora":
        return peft.LoraConfig(
            lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout, bias="none", **placement
        )
    lycoris = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}[peft_cfg.method]
    return lycoris(alpha=peft_cfg.alpha, rank_dropout=peft_cfg.dropout, **placement)


def apply_adapters(classifier: Classifier, peft_cfg: PeftConfig) -> AdapterPlan:
    """Wrap the backbone (only: the head stays a plain, fully trained module) in a
    peft model, then make the last blocks trainable again (ExPLoRA)."""
    plan = plan_adapters(classifier.backbone, peft_cfg)
    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 for is_gradient_checkpointing, deprecated there:
        # noise on every worker's build, nothing the user can act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # get_peft_model freezes every base weight of the backbone and injects the adapters.
        wrapped = peft.get_peft_model(classifier.backbone, adapter_config(peft_cfg, plan))
    targeted = sorted(wrapped.base_model.targeted_module_names)
    if targeted != sorted(plan.targeted):  # our matching and peft's must agree
        raise RuntimeError(f"peft adapted {targeted}, the plan expected {sorted(plan.targeted)}")
    base = wrapped.get_base_model()
    for path in plan.unfrozen_blocks:
        # Plain requires_grad rather than peft's modules_to_save: that would train a
        # copy of each block next to the frozen original (twice the memory) for the
        # same result after merging.
        base.get_submodule(path).requires_grad_(True)
    classifier.backbone = wrapped
    return plan


def merge_adapters(classifier: Classifier) -> Classifier:
    """In place: fold the adapters into the backbone's weights and drop peft's
    wrappers, leaving the plain transformers model (and its module names)."""
    if isinstance(classifier.backbone, peft.PeftModel):
        classifier.backbone = classifier.backbone.merge_and_unload(safe_merge=True)
    return classifier


@dataclass(frozen=True)
class PeftSetup:
    """Everything that determines a PEFT classifier before training: rebuilding it
    from this gives the identical frozen base, so checkpoints need not store it."""

    model: ModelConfig
    peft: PeftConfig
    num_labels: int
    seed: int
    # model.init_from, resolved: the saved model whose backbone is the frozen base.
    init_backbone: InitBackbone | None = None

    def build(self) -> Classifier:
        # Seeded here, not by the caller, and without touching the global RNG: the
        # base of a config-dict backbone is random, and every rank, a restarted worker
        # and the driver merging the selected checkpoint must all draw the same one.
        if self.model.freeze_backbone:
            raise PeftSetupError("model.freeze_backbone cannot be combined with training.mode: peft")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            classifier = build_initial_classifier(self.model, self.num_labels, self.init_backbone)
            apply_adapters(classifier, self.peft)
        return classifier

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model.model_dump(mode="json"),
                "peft": self.peft.model_dump(mode="json"),
                "num_labels": self.num_labels,
                "seed": self.seed,
                "init_backbone": None if self.init_backbone is None else asdict(self.init_backbone),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PeftSetup:
        raw = json.loads(text)
        return cls(
            model=ModelConfig.model_validate(raw["model"]),
            peft=PeftConfig.model_validate(raw["peft"]),
            num_labels=int(raw["num_labels"]),
            seed=int(raw["seed"]),
            init_backbone=InitBackbone(**raw["init_backbone"]) if raw.get("init_backbone") else None,
        )
