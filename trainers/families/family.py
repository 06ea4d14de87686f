"""What a model family is: `ModelFamily` (one kind of backbone, its parameters, names
and the one `create_model` the trainer uses), `ConfigFamily` (built from a config dict)
and `PretrainedFamily` (a saved model directory).

A family answers for the `model.backbone` section of a config both ways
(`backbone_section`, `params_of`), so the model a family describes is the model that
trains. torch and transformers are imported inside the methods that build models,
never at the top: run names are computed through families before anything heavy.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from trainers.families.params import FamilyParams, PretrainedParams
from trainers.schema import validation_problems

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

Modality = Literal["image", "text", "any"]


class InvalidParams(ValueError):
    """A family's parameters that do not validate: every problem at once, each as
    `field: what is wrong`."""

    def __init__(self, family: str, problems: list[str]) -> None:
        self.family = family
        self.problems = problems
        super().__init__(f"{family} parameters: " + "; ".join(problems))


class BackboneSection(Protocol):
    """The `model.backbone` section of a config as a family reads it (the config's
    `BackboneConfig`): a local directory or hub id, or a config dict."""

    id: str | None
    config: dict[str, Any] | None


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
    # True when the backbone's last_hidden_state is a (B, C, H, W) feature map (a
    # convolutional network) rather than (B, tokens, C): it is pooled by its mean, has no
    # CLS token, and carries no transformer blocks for adapters.
    feature_map: ClassVar[bool] = False
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
            raise InvalidParams(self.name, validation_problems(exc, top_level="")) from None

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
                shown = {f: format_value(values[f]) if isinstance(values[f], float) else values[f] for f in fields}
                kept.append(segment.format_map(shown))
        return "-".join(kept)

    def describe(self, params: FamilyParams | Mapping[str, Any]) -> list[str]:
        """Short facts for a human (`Hidden: 64`), with defaults filled in."""
        values = self._coerce(params).model_dump()
        return [f"{label}: {format_value(values[f])}" for label, f in self.described_fields if f in values]

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

    def params_of(self, backbone: BackboneSection) -> FamilyParams:
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

    def params_of(self, backbone: BackboneSection) -> FamilyParams:
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
        return facts + [f"{label}: {format_value(saved[f])}" for label, f in self.described_fields if f in saved]

    def architecture(self, params: FamilyParams | Mapping[str, Any]) -> str:
        # Without a config.json to read, the directory's name is all there is
        # (all-MiniLM-L6-v2 -> all).
        model_type = self.saved_config(params).get("model_type")
        return str(model_type) if model_type else self.directory(params).split("-")[0].lower()

    def backbone_section(self, params: FamilyParams | Mapping[str, Any]) -> dict[str, Any]:
        return {"id": str(self._coerce(params).path)}  # type: ignore[attr-defined]

    def params_of(self, backbone: BackboneSection) -> FamilyParams:
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


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
