"""Typed configuration of the model, the training loop and the worker group.

These models live in `trainers` (not `ray_app`) so that the training code can take
them as arguments without importing the CLI package; `ray_app.config` composes them
into the full application config. The backbone section is the model families'
(`trainers.families.BackboneConfig`): a family reads it both ways.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainers.families import BackboneConfig, family_of
from trainers.schema import StrictModel


class PreprocessingConfig(StrictModel):
    image_size: int | None = Field(
        default=None,
        gt=0,
        description="Side length images are resized to. Default: the backbone's "
        "image processor, else the backbone config's image_size.",
    )
    image_mean: list[float] | None = Field(
        default=None,
        description="Per-channel mean subtracted after scaling pixels to [0, 1]. "
        "Default: the image processor's, else 0.5 per channel.",
    )
    image_std: list[float] | None = Field(
        default=None,
        description="Per-channel std divided after subtracting the mean. Default: the "
        "image processor's, else 0.5 per channel.",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Local directory of a tokenizer for text backbones built from a "
        "config dict (a backbone given by id uses its own tokenizer).",
    )
    max_length: int = Field(
        default=128, gt=0, description="Token sequence length for text (truncate / pad)."
    )

    @model_validator(mode="after")
    def _mean_std_lengths(self) -> PreprocessingConfig:
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("set both image_mean and image_std, or neither")
        if self.image_mean is not None and len(self.image_mean) != len(self.image_std or []):
            raise ValueError("image_mean and image_std must have one value per channel each")
        if self.image_std is not None and any(s <= 0 for s in self.image_std):
            raise ValueError("image_std values must be > 0")
        return self


# Test-time views of an image (trainers/views.py): the image, its mirror image, and
# crops of model.view_crop_fraction of each side (centre or a corner) resized back.
ViewName = Literal["identity", "hflip", "center_crop", "top_left", "top_right", "bottom_left", "bottom_right"]
DEFAULT_VIEW_CROP_FRACTION = 0.875


class ModelConfig(StrictModel):
    backbone: BackboneConfig = Field(description="The Hugging Face encoder to build on.")
    head: Literal["linear", "mlp"] = Field(
        default="linear", description="Classifier on the pooled feature."
    )
    head_hidden_dim: int = Field(
        default=256, gt=0, description="Hidden width of the mlp head (unused by linear)."
    )
    head_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout on the pooled feature."
    )
    pooling: Literal["cls", "mean"] = Field(
        default="cls",
        description="Pooled feature: the first (CLS) token, or the mean over tokens "
        "(masked by attention_mask for text). A convolutional backbone (ConvNeXt) has no "
        "CLS token and always pools by its own mean over the last feature map: mean, "
        "recorded as such when left out.",
    )
    freeze_backbone: bool = Field(
        default=False,
        description="Train the head alone (a linear probe); the backbone stays in eval "
        "mode and its weights never change.",
    )
    preprocessing: PreprocessingConfig = Field(
        default_factory=PreprocessingConfig,
        description="Image resize / normalisation and text tokenisation.",
    )
    init_from: str | None = Field(
        default=None,
        description="A trained run (name under storage.root, or its directory) whose "
        "selected backbone weights start this run: the PEFT -> baseline chain (a PEFT "
        "run's model has its adapters merged). The backbone must have the same "
        "architecture; the head starts fresh, so the label sets may differ.",
    )
    views: list[ViewName] = Field(
        default_factory=lambda: ["identity"],
        description="Image views whose logits are averaged (the mean of the logits) at "
        "inference: validation, the exported val_calib / val_test logits and serving all "
        "use them; training sees single images. identity: the image; hflip: its mirror "
        "image (only for classes that keep their meaning when mirrored, so not digits or "
        "text); center_crop, top_left, top_right, bottom_left, bottom_right: a crop of "
        "view_crop_fraction of each side, resized back to the image size. Each view costs "
        "one forward pass. Images only.",
    )
    view_crop_fraction: float = Field(
        default=DEFAULT_VIEW_CROP_FRACTION,
        gt=0.0,
        lt=1.0,
        description="Side of the crop views as a fraction of the image side, rounded to "
        "the nearest pixel (0.875 of 8 px is 7 px). Used by the crop views only.",
    )

    @model_validator(mode="after")
    def _pooling_the_backbone_has(self) -> ModelConfig:
        if not family_of(self.backbone).feature_map:
            return self
        if "pooling" in self.model_fields_set and self.pooling == "cls":
            raise ValueError(
                "pooling: cls needs a CLS token, and this backbone is convolutional (a feature map, "
                "no tokens): use pooling: mean, or leave pooling out"
            )
        # Left out: the resolved config says what the model does (written to __dict__: an
        # assignment would validate this model again).
        self.__dict__["pooling"] = "mean"
        return self

    @field_validator("views")
    @classmethod
    def _views_listed_once(cls, views: list[str]) -> list[str]:
        if not views:
            raise ValueError("give at least one view, e.g. [identity] (a single plain forward)")
        repeated = sorted({name for name in views if views.count(name) > 1})
        if repeated:
            raise ValueError(f"{repeated} listed more than once; each view counts once in the mean")
        return views


class EmaConfig(StrictModel):
    enabled: bool = Field(
        default=False,
        description="Keep an exponential moving average of the weights; when on, the "
        "EMA weights are the ones validated, selected and exported.",
    )
    decay: float = Field(default=0.999, gt=0.0, lt=1.0, description="EMA decay per step.")


class EarlyStoppingConfig(StrictModel):
    metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        default="accuracy",
        description="val_select metric that chooses the checkpoint and drives early "
        "stopping (loss is minimised, the others maximised).",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many epochs without improvement; null never stops early.",
    )
    min_delta: float = Field(
        default=0.0, ge=0.0, description="Smallest change that counts as an improvement."
    )

    @property
    def mode(self) -> Literal["max", "min"]:
        return "min" if self.metric == "loss" else "max"


# peft methods that apply to encoder Linear layers and merge into them for export.
PeftMethod = Literal["lora", "loha", "lokr"]


class PeftConfig(StrictModel):
    """Adapters on the backbone for `training.mode: peft` (the ExPLoRA recipe when
    `unfreeze_last_blocks` > 0). The head is always trained in full."""

    method: PeftMethod = Field(
        default="lora",
        description="peft method on the targeted Linear layers: lora (low-rank update "
        "B @ A), loha (Hadamard product of two low-rank updates) or lokr (Kronecker "
        "product). All merge into plain weights for export.",
    )
    r: int = Field(default=8, gt=0, description="Rank of the adapter update.")
    alpha: float = Field(
        default=16.0,
        gt=0.0,
        description="Scale of the adapter update: it is multiplied by alpha / r.",
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Adapter dropout during training: on the adapter's input for lora "
        "(lora_dropout), on the rank components for loha / lokr (rank_dropout).",
    )
    target_modules: Literal["auto"] | list[str] = Field(
        default="auto",
        description="Linear layers inside the encoder blocks that get adapters. auto: "
        "every attention and MLP projection of the loaded backbone (q/k/v/o_proj, fc1/fc2 "
        "on ViT and DINOv2; query/key/value/dense on BERT). A list names layers the peft "
        "way: a name matches a module whose path ends with it (e.g. q_proj, "
        "attention.self.query).",
    )
    unfreeze_last_blocks: int = Field(
        default=0,
        ge=0,
        description="ExPLoRA: the last N encoder blocks are trained in full (no adapters "
        "there); adapters go on the blocks before them. 0 trains adapters on every block.",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _auto_or_list(cls, value: Any) -> Any:
        # One message instead of one per member of the union; and a lone string is not
        # taken as a one-name list (peft would read a string as a regular expression).
        if value != "auto" and not isinstance(value, list):
            raise ValueError("use auto or a list of module names, e.g. [q_proj, v_proj]")
        return value

    @model_validator(mode="after")
    def _named_targets(self) -> PeftConfig:
        if isinstance(self.target_modules, list):
            if not self.target_modules:
                raise ValueError("target_modules: give at least one module name, or auto")
            if any(not name.strip() for name in self.target_modules):
                raise ValueError("target_modules: module names must not be empty")
        return self


class AugmentConfig(StrictModel):
    """Train-time image augmentation, drawn per sample on the worker's device after
    normalisation. Validation, calibration, test and serving never see it."""

    crop_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Random resized crop: each training image is replaced by a crop of "
        "this fraction of its area up to all of it (aspect 3/4..4/3, anywhere in the "
        "image), resized back. null: off. The recipes crop images under 32 px gently "
        "(0.8: a deep crop of an 8-px digit loses whole strokes), larger ones deeper.",
    )
    hflip: bool = Field(
        default=False,
        description="Mirror half the training images left-right. Only where the classes "
        "keep their meaning mirrored: it needs hflip in model.views.",
    )
    jitter: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Brightness and contrast jitter: each image gets a brightness shift "
        "and a contrast factor drawn within +-jitter. 0: off.",
    )

    @property
    def enabled(self) -> bool:
        return self.crop_scale is not None or self.hflip or self.jitter > 0


RecipeName = Literal["scratch", "finetune", "peft", "probe"]


class TrainingConfig(StrictModel):
    mode: Literal["baseline", "peft"] = Field(
        default="baseline",
        description="baseline: head (and backbone unless frozen) trained supervised. "
        "peft: adapters on the backbone (training.peft) plus the head; the exported "
        "model has the adapters merged into plain weights.",
    )
    peft: PeftConfig | None = Field(
        default=None,
        description="Adapter settings for mode peft (defaults when omitted). Setting it "
        "in mode baseline is an error, so no setting is silently ignored.",
    )
    recipe: Literal["auto"] | RecipeName = Field(
        default="auto",
        description="Defaults for the settings below that the config leaves out "
        "(trainers/recipes.py). auto chooses from the config: scratch (a backbone built "
        "from a config dict), finetune (a pretrained model.backbone.id, mode baseline), "
        "peft (pretrained, mode peft) or probe (model.freeze_backbone). The resolved "
        "config records the recipe chosen and every value it set; a value the config "
        "gives always wins.",
    )
    epochs: int = Field(default=10, ge=1, description="Passes over the train split.")
    batch_size: int = Field(default=64, ge=1, description="Samples per step per worker.")
    lr: float | Literal["auto"] = Field(
        default=1e-3,
        description="Peak AdamW learning rate (of the backbone's top layer; the head's is "
        "lr x head_lr_scale). auto: a learning-rate range test on the train split picks it "
        "before training (trainers/lr_range.py; its curve is saved with the run).",
    )
    lr_range_steps: int = Field(
        default=100, ge=10, description="Steps of the range test that lr: auto runs (one train batch each)."
    )
    weight_decay: float = Field(
        default=0.05, ge=0.0, description="AdamW weight decay (not applied to biases and norms)."
    )
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Fraction of steps with linear warmup before cosine decay."
    )
    head_lr_scale: float = Field(
        default=1.0,
        gt=0.0,
        description="The head's learning rate as a multiple of lr: a freshly initialised "
        "head on a pretrained backbone learns faster than the weights under it.",
    )
    layer_decay: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Layer-wise learning-rate decay: encoder block i of L trains at lr x "
        "layer_decay^(L - i), the embeddings at layer_decay^(L + 1), so the general "
        "early layers of a pretrained model move least. 1: one lr for the whole backbone.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Cross-entropy label smoothing of the training loss (validation "
        "metrics use the plain loss).",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Train-time image augmentation.")
    grad_clip_norm: float | None = Field(
        default=1.0, gt=0.0, description="Clip the global gradient norm to this; null disables."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Autocast dtype on GPU (auto: bf16 when supported, else fp16). "
        "CPU training always runs in fp32.",
    )
    ema: EmaConfig = Field(default_factory=EmaConfig, description="Weight averaging.")
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="Checkpoint choice and stopping."
    )
    checkpoints_to_keep: int = Field(
        default=2,
        ge=1,
        description="Checkpoints kept on disk: the best by the early-stopping metric "
        "(the latest is always kept too, for resuming).",
    )
    eval_batch_size: int = Field(default=256, ge=1, description="Batch size for validation and logits.")
    cache_train_shard_mb: int = Field(
        default=2048,
        ge=0,
        description="After its first streamed epoch, a worker keeps its train shard (and "
        "its share of val_select) where the model runs (GPU memory on a GPU) when each is "
        "at most this many MiB, and reshuffles the shard each epoch: no per-epoch Ray Data "
        "restart, no per-batch conversion or copy. 0 always streams from Ray Data.",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the model in each worker: faster steps on a GPU once it "
        "is compiled (the first steps take a minute or more); rarely worth it on CPUs.",
    )
    fused_optimizer: bool = Field(
        default=True,
        description="AdamW's fused CUDA kernel (one launch for every parameter) on GPUs; "
        "CPUs use the default implementation either way.",
    )
    tf32: bool = Field(
        default=True,
        description="TensorFloat-32 for the float32 matrix products on GPUs that have it "
        "(Ampere and later): the fp32 parts of a bf16 run, or an fp32 run, several times "
        "faster at ~10-bit mantissa precision. No effect on CPUs.",
    )

    @model_validator(mode="before")
    @classmethod
    def _peft_defaults_in_peft_mode(cls, data: Any) -> Any:
        # `-o training.mode=peft` alone should work: fill the section with defaults
        # before validation, so the resolved config records the values actually used.
        if isinstance(data, dict) and data.get("mode") == "peft" and data.get("peft") is None:
            return {**data, "peft": {}}
        return data

    @field_validator("lr", mode="before")
    @classmethod
    def _positive_lr_or_auto(cls, value: Any) -> Any:
        # One message for the two members of the union, not one per member.
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"Input should be a valid number, or auto (got {value!r})")  # noqa: TRY004 (pydantic reports ValueError)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"Input should be a valid number, or auto (got {value!r})") from None
        if not number > 0:
            raise ValueError(f"Input should be greater than 0, or auto (got {value!r})")
        return number

    def peak_lr(self) -> float:
        """The learning rate to train with; lr: auto is resolved by the train stage
        (`with_lr`) before any worker starts, so reaching here with auto is a bug."""
        if self.lr == "auto":
            raise ValueError("training.lr is auto: run the range test first (TrainingConfig.with_lr)")
        return float(self.lr)

    def with_lr(self, lr: float) -> TrainingConfig:
        return self.model_copy(update={"lr": lr})

    @model_validator(mode="after")
    def _peft_only_in_peft_mode(self) -> TrainingConfig:
        if self.mode != "peft" and self.peft is not None:
            raise ValueError(
                f"training.peft applies to training.mode: peft only (mode is {self.mode}); "
                "remove training.peft or set training.mode: peft"
            )
        return self


class ScalingConfig(StrictModel):
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = Field(default=False, description="One GPU per worker.")
    cpus_per_worker: float = Field(default=1.0, gt=0.0, description="CPUs reserved per worker.")
    max_failures: int = Field(
        default=1,
        ge=0,
        description="Worker-group restarts allowed; a restarted group resumes from the "
        "latest checkpoint, so a killed worker costs at most one epoch.",
    )
