"""Model families: a backbone described by the parameters a person chooses.

A family (ViT, DINOv2, DINOv3, BERT, a pretrained local directory, or one registered by
another package) owns everything about one kind of backbone:

- its domain parameters, `params_model`: a pydantic model whose fields are the Hugging
  Face config keys that matter, each with a default and a description (so a form can be
  built from `params_schema()`), cross-field rules in one validator that reports every
  broken rule at once, and any other config key passed through to the HF config;
- the `model.backbone` section of a config that those parameters stand for
  (`backbone_section`) and the parameters a config's backbone stands for (`params_of`);
- the variant name of a set of parameters (`vit-h64-l4`, the `{backbone}` of run names);
- `create_model(params)`: the one way the trainer builds a backbone, so the model a
  family describes is the model that trains.

Families come from `family_registry()`: the built-ins plus every entry point in the
group `ray_app.families` (a `ModelFamily` instance or subclass), so another package
adds one without editing this one. `family_of(backbone)` finds a config's family by its
`model_type`; a model_type no family claims goes to the generic family, which builds
whatever `AutoConfig.for_model` knows.

This module is imported while run names are computed, before anything heavy: torch and
transformers are imported inside the methods that build models, never at the top.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import string
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainers.config import BackboneConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ray_app.families"
Modality = Literal["image", "text", "any"]
# Family names appear in URLs (/api/v1/families/{name}) and run metadata.
FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


class InvalidParams(ValueError):
    """A family's parameters that do not validate: every problem at once, each as
    `field: what is wrong`."""

    def __init__(self, family: str, problems: list[str]) -> None:
        self.family = family
        self.problems = problems
        super().__init__(f"{family} parameters: " + "; ".join(problems))


class CrossFieldProblems(ValueError):
    """Raised by a params model's validator with every broken cross-field rule; kept as
    a list so `InvalidParams` can report them one by one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


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


class FamilyInfo(BaseModel):
    """What a family is, for a listing or a form: everything but the behaviour."""

    name: str = Field(description="Registry key, e.g. vit.")
    title: str = Field(description="Human name, e.g. Vision Transformer (ViT).")
    modality: Modality = Field(description="image, text, or any (the variant decides: a local directory, an unlisted model_type).")
    description: str = Field(description="What the family builds, in a sentence or two.")
    model_type: str | None = Field(description="The Hugging Face model_type its config dicts name; null for pretrained and generic.")
    variant_pattern: str = Field(description="How a variant is named from its parameters, e.g. vit-h{hidden_size}-l{num_hidden_layers}.")
    params_schema: dict[str, Any] = Field(description="JSON schema of the parameters (every field with its description and default).")


# --- families -------------------------------------------------------------------------


class ModelFamily:
    """One kind of backbone. Subclass it (usually `ConfigFamily`) and set the class
    attributes; the registry uses one instance per family."""

    name: ClassVar[str]
    title: ClassVar[str]
    modality: ClassVar[Modality]
    description: ClassVar[str]
    params_model: ClassVar[type[FamilyParams]]
    # Placeholders are parameter names (and what `variant_values` adds). A `-`-separated
    # segment whose value the parameters leave to the default is left out, so a config
    # naming only some keys keeps the short name it always had (`vit-h64`).
    variant_pattern: ClassVar[str]
    # The Hugging Face model_type this family claims in config dicts (None: none).
    model_type: ClassVar[str | None] = None
    # (label, field) pairs shown by `describe`.
    described_fields: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Hidden", "hidden_size"), ("Layers", "num_hidden_layers"), ("Heads", "num_attention_heads"),
    )

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # --- parameters ---
    def params_schema(self) -> dict[str, Any]:
        """JSON schema of the parameters for a form: `properties` maps each field to its
        `type`, `default`, `description` and bounds; `required` lists the fields with no
        default; `additionalProperties` says whether other HF config keys pass through."""
        return self.params_model.model_json_schema()

    def validate_params(self, raw: Mapping[str, Any]) -> FamilyParams:
        """`raw` as this family's parameters, or InvalidParams with every problem."""
        try:
            return self.params_model.model_validate(dict(raw))
        except ValidationError as exc:
            raise InvalidParams(self.name, _problems(exc)) from None

    def _coerce(self, params: FamilyParams | Mapping[str, Any]) -> FamilyParams:
        if isinstance(params, self.params_model):
            return params
        if isinstance(params, FamilyParams):
            params = params.model_dump(exclude_unset=True)
        return self.validate_params(params)

    def given(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        """The parameters a config states explicitly (pass-through keys included)."""
        return self._coerce(params).model_dump(exclude_unset=True)

    # --- names and descriptions ---
    def variant_values(self, params: FamilyParams) -> dict[str, Any]:
        """What the variant pattern's placeholders can name: the given parameters."""
        return self.given(params)

    def variant_name(self, params: FamilyParams | Mapping[str, Any]) -> str:
        values = self.variant_values(self._coerce(params))
        kept = []
        for segment in self.variant_pattern.split("-"):
            fields = [f for _, f, _, _ in string.Formatter().parse(segment) if f]
            if all(f in values for f in fields):
                shown = {f: _format_value(values[f]) if isinstance(values[f], float) else values[f] for f in fields}
                kept.append(segment.format_map(shown))
        return "-".join(kept)

    def describe(self, params: FamilyParams | Mapping[str, Any]) -> list[str]:
        """Short facts for a human (`Hidden: 64`), with defaults filled in."""
        values = self._coerce(params).model_dump()
        return [f"{label}: {_format_value(values[f])}" for label, f in self.described_fields if f in values]

    def architecture(self, params: FamilyParams | Mapping[str, Any]) -> str:
        """The Hugging Face model_type the variant builds: `{family}` in run names."""
        if self.model_type is None:
            raise NotImplementedError(f"{type(self).__name__} must say which model_type a variant builds")
        return self.model_type

    def info(self) -> FamilyInfo:
        return FamilyInfo(
            name=self.name, title=self.title, modality=self.modality, description=self.description,
            model_type=self.model_type, variant_pattern=self.variant_pattern, params_schema=self.params_schema(),
        )

    # --- config sections and models: what each kind of family defines ---
    def backbone_section(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        """The `model.backbone` section of a config for these parameters."""
        raise NotImplementedError

    def params_of(self, backbone: BackboneConfig) -> FamilyParams:
        """The parameters a config's backbone section stands for (the inverse of
        `backbone_section`); InvalidParams when they break the family's rules."""
        raise NotImplementedError

    def hf_config(self, params: FamilyParams | Mapping[str, Any]) -> PretrainedConfig:
        """The Hugging Face config of the variant."""
        raise NotImplementedError

    def create_model(self, params: FamilyParams | Mapping[str, Any], *, weights: bool = True) -> PreTrainedModel:
        """The backbone the trainer trains. `weights=False` asks for the architecture
        alone (e.g. on the meta device, to check a plan): a pretrained family then does
        not read its weights."""
        raise NotImplementedError


class ConfigFamily(ModelFamily):
    """A family built from a config dict: `AutoConfig.for_model(model_type, **params)`
    and `AutoModel.from_config`, randomly initialised from the torch seed."""

    def _model_type(self, params: FamilyParams) -> str:
        assert self.model_type is not None, f"{type(self).__name__} sets no model_type"
        return self.model_type

    def _config_kwargs(self, params: FamilyParams) -> dict[str, Any]:
        # Only the keys the config gives: the HF config class fills the rest with the
        # same defaults, and the saved config.json stays what it was.
        return self.given(params)

    def architecture(self, params: FamilyParams | Mapping[str, Any]) -> str:
        return self._model_type(self._coerce(params))

    def backbone_section(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        params = self._coerce(params)
        return {"config": {"model_type": self._model_type(params), **self._config_kwargs(params)}}

    def params_of(self, backbone: BackboneConfig) -> FamilyParams:
        if backbone.config is None:
            raise InvalidParams(self.name, [f"model.backbone.id '{backbone.id}' is a pretrained directory, not a {self.name} config"])
        raw = dict(backbone.config)
        model_type = raw.pop("model_type", None)
        if model_type != self.model_type:
            raise InvalidParams(self.name, [f"model_type {model_type!r} is not {self.model_type!r}"])
        return self.validate_params(raw)

    def hf_config(self, params: FamilyParams | Mapping[str, Any]) -> PretrainedConfig:
        from transformers import AutoConfig

        params = self._coerce(params)
        return AutoConfig.for_model(self._model_type(params), **self._config_kwargs(params))

    def create_model(self, params: FamilyParams | Mapping[str, Any], *, weights: bool = True) -> PreTrainedModel:
        from transformers import AutoModel

        return AutoModel.from_config(self.hf_config(params))


class ViTFamily(ConfigFamily):
    name = "vit"
    model_type = "vit"
    title = "Vision Transformer (ViT)"
    modality = "image"
    description = (
        "A plain ViT encoder built from a config dict and randomly initialised: the image cut "
        "into square patches, one token each, plus a CLS token."
    )
    params_model = ViTParams
    variant_pattern = "vit-h{hidden_size}-l{num_hidden_layers}"


class Dinov2Family(ConfigFamily):
    name = "dinov2"
    model_type = "dinov2"
    title = "DINOv2"
    modality = "image"
    description = (
        "The DINOv2 ViT architecture (LayerScale, optional SwiGLU MLP, stochastic depth) built "
        "from a config dict and randomly initialised."
    )
    params_model = Dinov2Params
    variant_pattern = "dinov2-h{hidden_size}-l{num_hidden_layers}"


class DINOv3ViTFamily(ConfigFamily):
    name = "dinov3_vit"
    model_type = "dinov3_vit"
    title = "DINOv3 ViT"
    modality = "image"
    description = (
        "The DINOv3 ViT architecture (2-D rotary positions, register tokens, LayerScale) built "
        "from a config dict and randomly initialised."
    )
    params_model = DINOv3ViTParams
    variant_pattern = "dinov3_vit-h{hidden_size}-l{num_hidden_layers}"


class BertFamily(ConfigFamily):
    name = "bert"
    model_type = "bert"
    title = "BERT encoder"
    modality = "text"
    description = (
        "A BERT-style text encoder built from a config dict and randomly initialised; it needs "
        "a tokenizer directory (model.preprocessing.tokenizer) whose vocabulary fits vocab_size."
    )
    params_model = BertParams
    variant_pattern = "bert-h{hidden_size}-l{num_hidden_layers}"


class GenericFamily(ConfigFamily):
    name = "generic"
    title = "Other Hugging Face architecture"
    modality = "any"
    description = (
        "Fallback for a model_type no registered family claims: the config dict goes to "
        "AutoConfig.for_model unchecked and the model is built with AutoModel.from_config, so "
        "any architecture transformers knows still trains; no parameters are described or "
        "checked beyond model_type."
    )
    params_model = GenericParams
    variant_pattern = "{model_type}-h{hidden_size}-l{num_hidden_layers}"

    def _model_type(self, params: FamilyParams) -> str:
        return str(params.model_type)  # type: ignore[attr-defined]

    def _config_kwargs(self, params: FamilyParams) -> dict[str, Any]:
        return {k: v for k, v in self.given(params).items() if k != "model_type"}

    def variant_values(self, params: FamilyParams) -> dict[str, Any]:
        # model_type always names the variant, given or not (it has no default anyway).
        return {**self.given(params), "model_type": self._model_type(params)}

    def params_of(self, backbone: BackboneConfig) -> FamilyParams:
        if backbone.config is None:
            raise InvalidParams(self.name, [f"model.backbone.id '{backbone.id}' is a pretrained directory, not a config dict"])
        return self.validate_params(backbone.config)


class PretrainedFamily(ModelFamily):
    name = "pretrained"
    title = "Pretrained (local directory)"
    modality = "any"
    description = (
        "A saved Hugging Face model: a local directory with config.json and weights, loaded "
        "with AutoModel.from_pretrained (offline hosts can use local directories only)."
    )
    params_model = PretrainedParams
    variant_pattern = "{directory}"

    def directory(self, params: FamilyParams | Mapping[str, Any]) -> str:
        return Path(str(self._coerce(params).path).rstrip("/")).name  # type: ignore[attr-defined]

    def saved_config(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        """The directory's config.json as a dict; empty when there is none to read (a
        hub id, a directory not on this machine)."""
        return local_config(str(self._coerce(params).path))  # type: ignore[attr-defined]

    def variant_values(self, params: FamilyParams) -> dict[str, Any]:
        return {**self.given(params), "directory": self.directory(params)}

    def describe(self, params: FamilyParams | Mapping[str, Any]) -> list[str]:
        saved = self.saved_config(params)
        facts = [f"Pretrained: {self.directory(params)}"]
        return facts + [f"{label}: {_format_value(saved[f])}" for label, f in self.described_fields if f in saved]

    def architecture(self, params: FamilyParams | Mapping[str, Any]) -> str:
        # Without a config.json to read, the directory's name is all there is
        # (all-MiniLM-L6-v2 -> all).
        model_type = self.saved_config(params).get("model_type")
        return str(model_type) if model_type else self.directory(params).split("-")[0].lower()

    def backbone_section(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        return {"id": str(self._coerce(params).path)}  # type: ignore[attr-defined]

    def params_of(self, backbone: BackboneConfig) -> FamilyParams:
        if backbone.id is None:
            raise InvalidParams(self.name, ["model.backbone.config is a config dict, not a pretrained directory"])
        return self.validate_params({"path": backbone.id})

    def hf_config(self, params: FamilyParams | Mapping[str, Any]) -> PretrainedConfig:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self._coerce(params).path)  # type: ignore[attr-defined]

    def create_model(self, params: FamilyParams | Mapping[str, Any], *, weights: bool = True) -> PreTrainedModel:
        from transformers import AutoModel

        if not weights:
            return AutoModel.from_config(self.hf_config(params))
        return AutoModel.from_pretrained(self._coerce(params).path)  # type: ignore[attr-defined]


def local_config(path: str) -> dict[str, Any]:
    """config.json of a local model directory as a dict, read without transformers;
    empty when it is not there or not readable."""
    try:
        loaded = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, CrossFieldProblems):
            problems += cause.problems
            continue
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        got = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
        problems.append(f"{where}: {message}{got}" if where else f"{message}{got}")
    return problems


# --- the registry -----------------------------------------------------------------------

BUILTIN_FAMILIES: tuple[ModelFamily, ...] = (
    ViTFamily(), Dinov2Family(), DINOv3ViTFamily(), BertFamily(), PretrainedFamily(), GenericFamily(),
)
_BUILTIN_BY_NAME = {family.name: family for family in BUILTIN_FAMILIES}
_BUILTIN_BY_MODEL_TYPE = {family.model_type: family for family in BUILTIN_FAMILIES if family.model_type}
PRETRAINED = _BUILTIN_BY_NAME["pretrained"]
GENERIC = _BUILTIN_BY_NAME["generic"]


def family_registry() -> dict[str, ModelFamily]:
    """Every family by name: the built-ins, then those of installed packages (entry
    points in the `ray_app.families` group), read once per process (`reload_families`
    reads them again). A third-party entry point that fails to load, is not a family or
    takes a name already used is skipped with a warning naming it."""
    return dict(_registry())


def reload_families() -> None:
    """Forget the entry points read so far: the next lookup reads them again (after a
    package was installed into the running process, and in tests)."""
    _registry.cache_clear()


@functools.cache
def _registry() -> dict[str, ModelFamily]:
    families = dict(_BUILTIN_BY_NAME)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = _load_family(entry_point)
        except Exception as exc:  # another package's bug must not take every family down
            logger.warning(
                "model family entry point '%s' (%s = %s) skipped: %s: %s",
                entry_point.name, ENTRY_POINT_GROUP, entry_point.value, type(exc).__name__, exc,
            )
            continue
        if family.name in families:
            logger.warning(
                "model family entry point '%s' (%s) skipped: the name '%s' is already taken by %r",
                entry_point.name, entry_point.value, family.name, families[family.name],
            )
            continue
        families[family.name] = family
    return families


def _load_family(entry_point: EntryPoint) -> ModelFamily:
    loaded = entry_point.load()
    family = loaded() if isinstance(loaded, type) and issubclass(loaded, ModelFamily) else loaded
    if not isinstance(family, ModelFamily):
        raise TypeError(f"it loads {loaded!r}, not a ModelFamily instance or subclass")
    problems = family_problems(family)
    if family.name != entry_point.name:
        problems.append(f"it is registered as '{entry_point.name}' but its name is '{family.name}'")
    if problems:
        raise ValueError("; ".join(problems))
    return family


def family_problems(family: ModelFamily) -> list[str]:
    """What keeps a family object from working in the registry: missing or wrong class
    attributes, found before any config uses it."""
    problems = []
    for attribute in ("name", "title", "description", "variant_pattern"):
        if not isinstance(getattr(family, attribute, None), str) or not getattr(family, attribute):
            problems.append(f"{attribute} must be a non-empty string")
    if isinstance(getattr(family, "name", None), str) and not FAMILY_NAME.fullmatch(family.name):
        problems.append(f"name '{family.name}' must be lower-case letters, digits and _")
    if getattr(family, "modality", None) not in ("image", "text", "any"):
        problems.append(f"modality must be image, text or any, not {getattr(family, 'modality', None)!r}")
    params_model = getattr(family, "params_model", None)
    if not (isinstance(params_model, type) and issubclass(params_model, FamilyParams)):
        problems.append("params_model must be a subclass of trainers.families.FamilyParams")
    else:
        undescribed = sorted(n for n, f in params_model.model_fields.items() if not f.description)
        if undescribed:
            problems.append(f"parameters {undescribed} have no description")
    return problems


def family_for_model_type(model_type: str) -> ModelFamily:
    """The family whose config dicts name this model_type: a built-in first (no entry
    point is read for those), then a registered one, else the generic family."""
    if model_type in _BUILTIN_BY_MODEL_TYPE:
        return _BUILTIN_BY_MODEL_TYPE[model_type]
    for family in _registry().values():
        if family.model_type == model_type:
            return family
    return GENERIC


def family_of(backbone: BackboneConfig) -> ModelFamily:
    """A config's backbone family: a directory (`id`) is `pretrained`, a config dict
    goes by its `model_type`."""
    if backbone.config is None:
        return PRETRAINED
    return family_for_model_type(str(backbone.config["model_type"]))


def family_and_params(backbone: BackboneConfig) -> tuple[ModelFamily, FamilyParams]:
    """A config's backbone as (family, its parameters)."""
    family = family_of(backbone)
    return family, family.params_of(backbone)
