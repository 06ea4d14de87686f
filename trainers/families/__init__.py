"""Model families: a backbone described by the parameters a person chooses.

A family (ViT, DINOv2, DINOv3, BERT, a pretrained local directory, or one registered by
another package) owns everything about one kind of backbone: its parameters
(`params.py`), the `model.backbone` config section they stand for (`backbone.py`), the
variant name (`vit-h64-l4`, the `{backbone}` of run names) and `create_model`, the one
way the trainer builds a backbone (`family.py`, `builtin.py`); `registry.py` finds them.
"""

from trainers.families.backbone import BackboneConfig
from trainers.families.builtin import (
    BertFamily,
    ConvNextFamily,
    Dinov2Family,
    DINOv3ViTFamily,
    GenericFamily,
    ViTFamily,
)
from trainers.families.family import (
    BackboneSection,
    ConfigFamily,
    FamilyInfo,
    InvalidParams,
    Modality,
    ModelFamily,
    PretrainedFamily,
    format_value,
    local_config,
)
from trainers.families.params import FamilyParams
from trainers.families.registry import (
    BUILTIN_FAMILIES,
    ENTRY_POINT_GROUP,
    GENERIC,
    PRETRAINED,
    family_and_params,
    family_for_model_type,
    family_of,
    family_problems,
    family_registry,
    reload_families,
)
from trainers.schema import CrossFieldProblems

__all__ = [
    "BUILTIN_FAMILIES",
    "ENTRY_POINT_GROUP",
    "GENERIC",
    "PRETRAINED",
    "BackboneConfig",
    "BackboneSection",
    "BertFamily",
    "ConfigFamily",
    "ConvNextFamily",
    "CrossFieldProblems",
    "DINOv3ViTFamily",
    "Dinov2Family",
    "FamilyInfo",
    "FamilyParams",
    "GenericFamily",
    "InvalidParams",
    "Modality",
    "ModelFamily",
    "PretrainedFamily",
    "ViTFamily",
    "family_and_params",
    "family_for_model_type",
    "family_of",
    "family_problems",
    "family_registry",
    "format_value",
    "local_config",
    "reload_families",
]
