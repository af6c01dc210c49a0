"""The explainer template, the `Explanation` result, the registry and the hook context managers.

`xai_core.explainers` fills the registry by importing every method module."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_core.errors import InputError, ModelError, ParameterError, TargetError, UnknownNameError
from xai_core.models import CropBox, ModelHandle


@dataclass
class Explanation:
    """A non-negative relevance map at model-input resolution for one (image, target), with the crop the model saw."""

    map: np.ndarray
    method: str
    target: str
    model: str
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    crop: CropBox | None = None

    def resized_to_image(self, image_shape: tuple[int, int], crop: CropBox | None = None) -> np.ndarray:
        """The map on the source image grid: resized into the crop the model saw, zero outside it."""
        crop = crop or self.crop
        if crop is None:
            raise InputError("this explanation does not know the crop it was computed on; pass `crop`")
        out = np.zeros(image_shape, np.float32)
        resized = cv2.resize(self.map.astype(np.float32), (crop.size, crop.size), interpolation=cv2.INTER_LINEAR)
        out[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size] = resized
        return out


Targets = torch.Tensor | int | str | Sequence[int | str]


@dataclass(frozen=True)
class ExplainBatch:
    """What a method's step gets: inputs and validated label indices on the model's device, and the rows that show
    the same image (one image explained for several targets), found once."""

    x: torch.Tensor
    targets: torch.Tensor
    groups: list[list[int]]


class Explainer(ABC):
    """One attribution method: batched over images and targets, on the model's device.

    `explain` is the template: it resolves parameters (ParameterError for unknown ones), validates inputs and
    targets (InputError, TargetError), groups repeated images, calls the method's own `_explain` and checks the
    contract of its output: [B, H, W] float32, finite, non-negative.
    """

    name: ClassVar[str]
    cost: ClassVar[Literal["fast", "slow"]] = "fast"
    defaults: ClassVar[dict[str, Any]] = {}
    reuses_forward: ClassVar[bool] = False  # can explain from the pyramid kept by a prediction forward
    # the engine may batch concurrent requests (other images, targets) into one call: rows never interact
    batches_requests: ClassVar[bool] = False
    unit_range: ClassVar[bool] = False  # maps are absolute values in [0, 1] (display them on a fixed scale)

    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: Targets, **params: Any) -> torch.Tensor:
        """Relevance maps [B, H, W] (non-negative, float32) for inputs [B, C, H, W] and one target per row (label
        indices or names; a single one applies to every row)."""
        inputs, resolved = self.prepare(handle, x, targets, params)
        return self._checked(handle, self._explain(handle, inputs, **resolved), inputs.x)

    def explain_from_taps(self, handle: ModelHandle, taps: list[torch.Tensor], x: torch.Tensor,
                          targets: Targets) -> torch.Tensor:
        """The same maps from the feature pyramid kept by an earlier prediction forward (methods with
        `reuses_forward`); only what follows the pyramid runs."""
        if not self.reuses_forward:
            raise ParameterError(f"{self.name} cannot explain from a kept forward; call explain()")
        inputs, _ = self.prepare(handle, x, targets, {})
        return self._checked(handle, self._explain_from_taps(handle, taps, inputs), inputs.x)

    @abstractmethod
    def _explain(self, handle: ModelHandle, inputs: ExplainBatch, **params: Any) -> torch.Tensor:
        """The method itself, on validated inputs and resolved parameters."""

    def _explain_from_taps(self, handle: ModelHandle, taps: list[torch.Tensor], inputs: ExplainBatch) -> torch.Tensor:
        raise NotImplementedError

    def available(self, handle: ModelHandle) -> bool:
        """Whether this method can run for the model (methods that need a trained module say no without one)."""
        return True

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The defaults with `overrides` applied; ParameterError naming the known parameters for unknown ones."""
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ParameterError(f"{self.name} has no parameter(s) {', '.join(sorted(unknown))}; known: {known}")
        return {**self.defaults, **overrides}

    def prepare(self, handle: ModelHandle, x: torch.Tensor, targets: Targets, params: dict[str, Any]
                ) -> tuple[ExplainBatch, dict[str, Any]]:
        """Validated inputs on the model's device, label indices and repeated-image groups, and resolved params."""
        resolved = self.params(**params)
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise InputError(f"{self.name} expects inputs [B, C, H, W]; got {getattr(x, 'shape', type(x))}")
        channels, size = handle.card.input.channels, handle.card.input.size
        if x.shape[1] != channels:
            raise InputError(f"{handle.card.name} takes {channels}-channel inputs; got {x.shape[1]} channels")
        if tuple(x.shape[-2:]) != (size, size):
            raise InputError(f"{handle.card.name} takes {size} x {size} inputs; got {x.shape[-2]} x {x.shape[-1]} "
                             f"(preprocess the image with its card)")
        x = x.to(handle.device, torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise InputError("the input holds NaN or infinite values")
        indices = resolve_targets(handle, targets, x.shape[0]).to(handle.device)
        return ExplainBatch(x, indices, group_rows(x)), resolved

    def _checked(self, handle: ModelHandle, maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[0], *x.shape[-2:])
        if tuple(maps.shape) != expected or maps.dtype != torch.float32:
            raise RuntimeError(f"{self.name} returned {maps.dtype} {tuple(maps.shape)}, not float32 {expected}")
        if not bool(torch.isfinite(maps).all()):
            raise ModelError(f"{self.name} gave non-finite relevance for {handle.card.name}: the model's outputs or "
                             f"gradients are NaN or infinite for this input")
        if bool((maps < 0).any()):
            raise RuntimeError(f"{self.name} returned negative relevance")
        return maps


def resolve_targets(handle: ModelHandle, targets: Targets, rows: int) -> torch.Tensor:
    """One label index per row [rows] (long) from indices or names; TargetError for labels the model lacks."""
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.ndim > 1:
            raise TargetError(f"targets must be label indices [B]; got {targets.dtype} {tuple(targets.shape)}")
        values: list[int | str] = targets.reshape(-1).tolist()
    elif isinstance(targets, (int, str, np.integer)):
        values = [targets]
    else:
        values = list(targets)
    if len(values) == 1 and rows != 1:
        values = values * rows
    if len(values) != rows:
        raise TargetError(f"{len(values)} targets for {rows} images: give one per image, or one for all")
    return torch.tensor([handle.label_index(v) for v in values], dtype=torch.long)


def group_rows(*tensors: torch.Tensor) -> list[list[int]]:
    """Rows that hold the same values in every tensor, in order of first appearance (one sort, never B x B
    comparisons)."""
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for row, key in enumerate(inverse.tolist()):
        groups.setdefault(key, []).append(row)
    return list(groups.values())


_REGISTRY: dict[str, Explainer] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add an explainer to the registry under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"explainer '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get_explainer(name: str) -> Explainer:
    """The registered explainer of that name; UnknownNameError listing the known ones."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown method '{name}'; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_explainers() -> list[str]:
    """Names of the registered explainers, in registration order."""
    return list(_REGISTRY)


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


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, h, w] -> [B, H, W], bilinear."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
