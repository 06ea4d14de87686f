"""The built-in model families: ViT, DINOv2, DINOv3 ViT, ConvNeXt and BERT from config dicts,
and the generic family for any other model_type transformers knows."""

from __future__ import annotations

from typing import Any

from trainers.families.family import BackboneSection, ConfigFamily, InvalidParams
from trainers.families.params import (
    BertParams,
    ConvNextParams,
    Dinov2Params,
    DINOv3ViTParams,
    FamilyParams,
    GenericParams,
    ViTParams,
)


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


class ConvNextFamily(ConfigFamily):
    name = "convnext"
    model_type = "convnext"
    title = "ConvNeXt"
    modality = "image"
    description = (
        "A ConvNeXt convolutional encoder built from a config dict and randomly initialised: "
        "stages of depthwise-convolution blocks, each stage halving the feature map. Its "
        "locality suits small images and small datasets, where a ViT from scratch has too "
        "little data to learn it; the pooled feature is the mean over the last feature map."
    )
    params_model = ConvNextParams
    variant_pattern = "convnext-w{width}-b{blocks}"
    described_fields = (("Stages", "num_stages"), ("Widths", "hidden_sizes"), ("Blocks", "depths"), ("Stem stride", "patch_size"))
    feature_map = True

    def variant_values(self, params: FamilyParams) -> dict[str, Any]:
        given = self.given(params)
        values = self._coerce(params).model_dump()
        named = {"width": values["hidden_sizes"][-1], "blocks": sum(values["depths"])}
        # A segment appears when the config states what it names, as for the other families.
        shown = {k: v for k, v in named.items() if {"width": "hidden_sizes", "blocks": "depths"}[k] in given}
        return {**given, **shown}


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

    def params_of(self, backbone: BackboneSection) -> FamilyParams:
        if backbone.config is None:
            raise InvalidParams(self.name, [f"model.backbone.id '{backbone.id}' is a pretrained directory, not a config dict"])
        return self.validate_params(backbone.config)
