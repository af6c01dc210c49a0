"""The explainer interface, the `Explanation` result, the registry and the hook context managers."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_core.models import CropBox, ModelHandle


@dataclass
class Explanation:
    """A non-negative relevance map at model-input resolution for one (image, target)."""

    map: np.ndarray
    method: str
    target: str
    model: str
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    signed: np.ndarray | None = None

    def normalised(self, value_range: tuple[float, float] | None = None) -> np.ndarray:
        """Scaled to [0, 1]: by this map's own min/max, or by a fixed range shared across maps."""
        lo, hi = value_range if value_range is not None else (float(self.map.min()), float(self.map.max()))
        if hi <= lo:
            return np.zeros_like(self.map)
        return np.clip((self.map - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def resized_to_image(self, image_shape: tuple[int, int], crop: CropBox) -> np.ndarray:
        """The map on the source image grid: resized into the crop the model saw, zero outside it."""
        import cv2

        out = np.zeros(image_shape, np.float32)
        resized = cv2.resize(self.map.astype(np.float32), (crop.size, crop.size), interpolation=cv2.INTER_LINEAR)
        out[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size] = resized
        return out


class Explainer(ABC):
    """One attribution method: batched over images and targets, on the model's device."""

    name: ClassVar[str]
    cost: ClassVar[Literal["fast", "slow"]] = "fast"
    defaults: ClassVar[dict[str, Any]] = {}
    signed: ClassVar[bool] = False
    reuses_forward: ClassVar[bool] = False  # can explain from the pyramid kept by a prediction forward
    unit_range: ClassVar[bool] = False  # maps are absolute values in [0, 1] (display them on a fixed scale)

    @abstractmethod
    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, **params: Any) -> torch.Tensor:
        """Relevance maps [B, H, W] (non-negative, float32) for inputs [B, C, H, W] and label indices [B]."""

    def available(self, handle: ModelHandle) -> bool:
        """Whether this method can run for the model (methods that need a trained module say no without one)."""
        return True

    def params(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name} has no parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        return {**self.defaults, **overrides}


_REGISTRY: dict[str, Explainer] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add an explainer to the registry under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"explainer '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get_explainer(name: str) -> Explainer:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_explainers() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def _load_builtin() -> None:
    import xai_core.explainers  # noqa: F401  (the package imports every method module)


@contextlib.contextmanager
def capture_activations(layer: nn.Module, *, cut: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record `layer`'s output during a forward; removed on every path (exceptions included).

    With `cut`, the output is replaced by a detached copy that requires grad, so gradients start at this layer and
    the backward pass runs only through what follows it (Grad-CAM needs nothing earlier).
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if cut:
            output = output.detach().requires_grad_(True)
            store["activations"] = output
            return output
        store["activations"] = output
        return None

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def validate_targets(handle: ModelHandle, targets: torch.Tensor) -> None:
    """IndexError for label indices the model does not have (methods that never gather logits call this)."""
    bad = (targets < 0) | (targets >= len(handle.card.labels))
    if bool(bad.any()):
        raise IndexError(f"target index {int(targets[bad][0])} out of range for {handle.card.name} "
                         f"({len(handle.card.labels)} labels)")


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits[b, targets[b]] for each b (gathered, never a B x B matrix)."""
    return logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, h, w] -> [B, H, W], bilinear."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
