"""Model cards, the registry and the loaders (bundled demo networks, torchxrayvision)."""

from xai_core.models.base import (
    CropBox,
    InputSpec,
    MissingWeightsError,
    ModelCard,
    ModelError,
    ModelHandle,
    center_square,
    find_weights,
    get_card,
    list_models,
    load_model,
    preprocess,
    register_model,
    weights_dirs,
)

__all__ = [
    "CropBox",
    "InputSpec",
    "MissingWeightsError",
    "ModelCard",
    "ModelError",
    "ModelHandle",
    "center_square",
    "find_weights",
    "get_card",
    "list_models",
    "load_model",
    "preprocess",
    "register_model",
    "weights_dirs",
]
