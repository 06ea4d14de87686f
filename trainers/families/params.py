"""The parameters a person chooses for a backbone: one pydantic model per family.

Each field is a Hugging Face config key that matters, with the HF config class's own
default and a description, so a form can be built from the JSON schema; rules between
fields live in `cross_field_problems` and are reported all at once. Keys that are not
fields pass through to the HF config unchecked.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainers.schema import CrossFieldProblems


class FamilyParams(BaseModel):
    """Base of every family's domain parameters.

    Keys that are not fields pass through to the Hugging Face config untouched
    (`extra="allow"`): a config may set any key its HF config class takes
    (`layer_norm_eps`, `hidden_act`, ...) without each family listing them all."""

    model_config = ConfigDict(extra="allow")

    def cross_field_problems(self) -> list[str]:
        """Rules between fields, each broken one as a sentence; empty when all hold."""
        return []

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FamilyParams:
        problems = self.cross_field_problems()
        if problems:
            raise CrossFieldProblems(problems)
        return self


# --- shared rules and fields ----------------------------------------------------------


def _heads_divide_hidden(params: Any) -> list[str]:
    hidden, heads = params.hidden_size, params.num_attention_heads
    if hidden % heads:
        return [
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}: each head "
            f"gets hidden_size / num_attention_heads channels (e.g. hidden_size {heads * max(1, hidden // heads)})"
        ]
    return []


def _patches_tile_image(params: Any) -> list[str]:
    size, patch = params.image_size, params.patch_size
    if size % patch:
        return [
            f"image_size {size} is not a multiple of patch_size {patch}: the last "
            f"{size % patch} pixel(s) of each side would never reach the model"
        ]
    return []


def _image_size(default: int) -> Any:
    return Field(default=default, gt=0, description="Side length of the (square) input image in pixels; a multiple of patch_size.")


def _patch_size(default: int) -> Any:
    return Field(default=default, gt=0, description="Side length of the square patches the image is cut into; each patch is one token.")


def _num_channels(default: int = 3) -> Any:
    return Field(default=default, gt=0, description="Colour channels of the input: 1 for grey-scale, 3 for RGB.")


def _hidden_size(default: int) -> Any:
    return Field(
        default=default, gt=0, description="Width of every token's hidden state; a multiple of num_attention_heads."
    )


def _num_hidden_layers(default: int) -> Any:
    return Field(default=default, gt=0, description="Transformer blocks in the encoder.")


def _num_attention_heads(default: int) -> Any:
    return Field(default=default, gt=0, description="Attention heads per block; each gets hidden_size / num_attention_heads channels.")


def _intermediate_size(default: int) -> Any:
    return Field(default=default, gt=0, description="Width of the MLP inside each block (usually 4 x hidden_size).")


def _dropout(default: float, what: str) -> Any:
    return Field(default=default, ge=0.0, lt=1.0, description=f"Dropout probability {what} during training.")


# --- parameters of the built-in families ------------------------------------------------
# Defaults are the Hugging Face config class's own (a test checks), so a config dict
# that leaves a key out and one that writes the default describe the same model.


class ViTParams(FamilyParams):
    image_size: int = _image_size(224)
    patch_size: int = _patch_size(16)
    num_channels: int = _num_channels()
    hidden_size: int = _hidden_size(768)
    num_hidden_layers: int = _num_hidden_layers(12)
    num_attention_heads: int = _num_attention_heads(12)
    intermediate_size: int = _intermediate_size(3072)
    hidden_dropout_prob: float = _dropout(0.0, "on the embeddings and block outputs")
    attention_probs_dropout_prob: float = _dropout(0.0, "on the attention weights")
    qkv_bias: bool = Field(default=True, description="Bias terms on the query, key and value projections.")

    def cross_field_problems(self) -> list[str]:
        return _heads_divide_hidden(self) + _patches_tile_image(self)


class Dinov2Params(FamilyParams):
    image_size: int = _image_size(224)
    patch_size: int = _patch_size(14)
    num_channels: int = _num_channels()
    hidden_size: int = _hidden_size(768)
    num_hidden_layers: int = _num_hidden_layers(12)
    num_attention_heads: int = _num_attention_heads(12)
    mlp_ratio: int = Field(default=4, gt=0, description="Width of the MLP inside each block as a multiple of hidden_size.")
    hidden_dropout_prob: float = _dropout(0.0, "on the embeddings and block outputs")
    attention_probs_dropout_prob: float = _dropout(0.0, "on the attention weights")
    drop_path_rate: float = _dropout(0.0, "of skipping a whole block (stochastic depth)")
    layerscale_value: float = Field(default=1.0, gt=0.0, description="Initial value of the per-channel scale on each block's residual branches (LayerScale).")
    use_swiglu_ffn: bool = Field(default=False, description="SwiGLU MLP instead of the plain GELU MLP in each block.")

    def cross_field_problems(self) -> list[str]:
        return _heads_divide_hidden(self) + _patches_tile_image(self)


class DINOv3ViTParams(FamilyParams):
    image_size: int = _image_size(224)
    patch_size: int = _patch_size(16)
    num_channels: int = _num_channels()
    hidden_size: int = _hidden_size(384)
    num_hidden_layers: int = _num_hidden_layers(12)
    num_attention_heads: int = _num_attention_heads(6)
    intermediate_size: int = _intermediate_size(1536)
    attention_dropout: float = _dropout(0.0, "on the attention weights")
    drop_path_rate: float = _dropout(0.0, "of skipping a whole block (stochastic depth)")
    layerscale_value: float = Field(default=1.0, gt=0.0, description="Initial value of the per-channel scale on each block's residual branches (LayerScale).")
    num_register_tokens: int = Field(default=0, ge=0, description="Extra learned tokens next to the CLS token (registers), dropped from the output patches.")
    use_gated_mlp: bool = Field(default=False, description="Gated (SwiGLU-style) MLP instead of the plain MLP in each block.")
    rope_theta: float = Field(default=100.0, gt=0.0, description="Base period of the 2-D rotary position embedding.")

    def cross_field_problems(self) -> list[str]:
        problems = _heads_divide_hidden(self) + _patches_tile_image(self)
        head_dim = self.hidden_size // self.num_attention_heads
        if not problems and head_dim % 4:
            # The 2-D rotary embedding splits each head into 4 parts (2 axes x sin / cos).
            problems.append(
                f"hidden_size {self.hidden_size} / num_attention_heads {self.num_attention_heads} = "
                f"{head_dim} channels per head, not a multiple of 4: the 2-D rotary position "
                "embedding needs them in fours"
            )
        return problems


class BertParams(FamilyParams):
    vocab_size: int = Field(default=30522, gt=0, description="Rows of the token embedding: at least the tokenizer's vocabulary size.")
    max_position_embeddings: int = Field(default=512, gt=0, description="Longest token sequence the model takes (model.preprocessing.max_length must not exceed it).")
    type_vocab_size: int = Field(default=2, gt=0, description="Token type (segment) ids the model knows.")
    hidden_size: int = _hidden_size(768)
    num_hidden_layers: int = _num_hidden_layers(12)
    num_attention_heads: int = _num_attention_heads(12)
    intermediate_size: int = _intermediate_size(3072)
    hidden_dropout_prob: float = _dropout(0.1, "on the embeddings and block outputs")
    attention_probs_dropout_prob: float = _dropout(0.1, "on the attention weights")

    def cross_field_problems(self) -> list[str]:
        return _heads_divide_hidden(self)


class ConvNextParams(FamilyParams):
    image_size: int = Field(default=224, gt=0, description="Side length of the (square) input image in pixels.")
    patch_size: int = Field(
        default=4, gt=0,
        description="Stride (and kernel) of the stem convolution: the first feature map is image_size / patch_size "
        "pixels a side. 1 keeps every pixel of a small image.",
    )
    num_channels: int = _num_channels()
    num_stages: int = Field(default=4, gt=0, description="Stages; each after the first halves the feature map's side.")
    hidden_sizes: list[int] = Field(
        default=[96, 192, 384, 768], description="Channels of each stage's feature map, one per stage."
    )
    depths: list[int] = Field(default=[3, 3, 9, 3], description="ConvNeXt blocks in each stage, one per stage.")
    drop_path_rate: float = _dropout(0.0, "of skipping a whole block (stochastic depth)")
    layer_scale_init_value: float = Field(
        default=1e-6, ge=0.0, description="Initial value of the per-channel scale on each block's residual branch."
    )

    def cross_field_problems(self) -> list[str]:
        problems = []
        for name in ("hidden_sizes", "depths"):
            values = getattr(self, name)
            if len(values) != self.num_stages:
                problems.append(f"{name} has {len(values)} entries for num_stages {self.num_stages}: give one per stage")
            if any(v <= 0 for v in values):
                problems.append(f"{name} must be positive (got {values})")
        side = self.image_size / self.patch_size / 2 ** (self.num_stages - 1)
        if side < 1 or side != int(side):
            problems.append(
                f"image_size {self.image_size} / patch_size {self.patch_size} / 2^(num_stages - 1) = {side:g}: the "
                "feature map must stay a whole number of pixels (>= 1) through every stage"
            )
        return problems


class GenericParams(FamilyParams):
    model_type: str = Field(
        min_length=1,
        description="Any model_type transformers knows (AutoConfig.for_model); every other key "
        "goes to its config class as given.",
    )


class PretrainedParams(FamilyParams):
    model_config = ConfigDict(extra="forbid")  # a directory carries its own config

    path: str = Field(
        min_length=1,
        description="Local directory of a Hugging Face model (config.json and weights), loaded "
        "with AutoModel.from_pretrained; a hub id works only where the hub is reachable.",
    )
