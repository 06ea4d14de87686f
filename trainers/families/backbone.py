"""`model.backbone`, the config section a model family reads: a local directory (or hub
id) of a saved model, or a config dict for `AutoConfig.for_model`. Validating it applies
the family's rules, so `hidden_size 65 is not a multiple of num_attention_heads 4` is
answered with the config, not by a worker failing to build the model."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from trainers.families.family import InvalidParams
from trainers.families.registry import family_of
from trainers.schema import StrictModel


class BackboneConfig(StrictModel):
    id: str | None = Field(
        default=None,
        description="Hugging Face model id or local directory, loaded with "
        "AutoModel.from_pretrained. Offline hosts can only use local directories.",
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="Keyword arguments for transformers.AutoConfig.for_model (must "
        "include model_type). Builds a randomly initialised backbone: how tests and "
        "the offline default get a model without downloading one. The model_type's "
        "family (trainers/families: vit, dinov2, dinov3_vit, bert, or generic for "
        "any other) checks the keys it knows; other keys go to the HF config as given.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BackboneConfig:
        if (self.id is None) == (self.config is None):
            raise ValueError("set exactly one of model.backbone.id or model.backbone.config")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError(
                "model.backbone.config needs a 'model_type' key (e.g. vit, dinov2, bert)"
            )
        try:
            family_of(self).params_of(self)
        except InvalidParams as exc:
            raise ValueError(str(exc)) from None
        return self
