"""Model cards: what the product knows about a network independent of its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: channels, square size and the value range pixels in [0, 1] are mapped to."""

    channels: int = 1
    size: int = 224
    value_range: tuple[float, float] = (-1024.0, 1024.0)


@dataclass(frozen=True)
class ModelCard:
    """Everything the product needs to know about a classifier, independent of its weights."""

    name: str
    labels: list[str]
    input: InputSpec
    cam_layer: str
    feature_layer: str
    thresholds: dict[str, float]
    provenance: dict[str, Any]
    intended_use: str
    family: str = "classifier"
    weights_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view of the card."""
        return {
            "name": self.name,
            "family": self.family,
            "labels": list(self.labels),
            "input": {"channels": self.input.channels, "size": self.input.size,
                      "value_range": list(self.input.value_range)},
            "cam_layer": self.cam_layer,
            "feature_layer": self.feature_layer,
            "thresholds": dict(self.thresholds),
            "provenance": dict(self.provenance),
            "intended_use": self.intended_use,
            "weights_file": self.weights_file,
        }


@dataclass(frozen=True)
class CropBox:
    """The square region of the source image the model saw (rows top..top+size, cols left..left+size)."""

    top: int
    left: int
    size: int


def center_square(height: int, width: int) -> CropBox:
    """The largest centred square of an image."""
    side = min(height, width)
    return CropBox(top=(height - side) // 2, left=(width - side) // 2, size=side)


def to_model_range(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pixels [..., H, W] in [0, 1] -> the network's input [..., C, H, W] (float32): clipped to [0, 1], scaled to
    the card's value range and repeated over its channels."""
    lo, hi = spec.value_range
    scaled = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0) * (hi - lo) + lo
    return np.repeat(scaled[..., None, :, :], spec.channels, axis=-3)
