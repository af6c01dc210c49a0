"""Model cards, the registry and the loaders (bundled demo networks, torchxrayvision).

Importing the package registers the built-in models (demo family first), so the registry is complete before any
caller can see it, from any thread.
"""

from xai_core.errors import MissingWeightsError, ModelError
from xai_core.models import demo, xrv  # noqa: F401  (register the built-in models; demo first)
from xai_core.models.base import ModelHandle, find_weights, preprocess, target_logits, weights_dirs
from xai_core.models.cards import CropBox, InputSpec, ModelCard, center_square
from xai_core.models.registry import get_card, list_models, load_model, register_model

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
    "target_logits",
    "weights_dirs",
]
