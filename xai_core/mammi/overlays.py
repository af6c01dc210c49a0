"""Where a neuron fires on an image: its activation map, upsampled to the image and overlaid on it (PNG).

A feature-layer neuron's map is its channel of the card's feature layer after the ReLU, the grid whose average is
the activation MAMMI annotates. An output neuron (one per label) has no spatial map of its own; its map is the
class activation map of a linear head (the label's head weights times the feature maps, ReLU'd), whose average is
the label's logit less the bias. Feature maps are computed once per (weights, image) and kept in a bounded cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from xai_core.errors import ModelError, ParameterError
from xai_core.mammi.annotate import LAYERS, feature_maps, head_weights, probe_images, to_model_range, weights_tag
from xai_core.models.base import ModelHandle
from xai_core.overlay import blend, png_bytes

DEFAULT_OPACITY = 0.5
CACHE_IMAGES = 512  # feature maps kept (demo: 258 x 7 x 7 float32, about 50 kB an image)
BATCH = 32

_cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def _image_key(pixels: np.ndarray) -> str:
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def _as_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """Grey [0, 1] pixels [H, W] on the model's square input grid (resized only when they are not on it)."""
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 2:
        raise ParameterError(f"an image must be grey pixels [H, W], got shape {pixels.shape}")
    if pixels.shape != (size, size):
        shrinking = min(pixels.shape) > size
        pixels = cv2.resize(np.ascontiguousarray(pixels), (size, size),
                            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0))


def _feature_maps(handle: ModelHandle, images: list[np.ndarray], lock: AbstractContextManager | None
                  ) -> list[np.ndarray]:
    """The ReLU'd feature-layer maps [K, h, w] of each image (input-grid pixels), from the cache where possible."""
    layer_path = handle.card.feature_layer
    tag = weights_tag(handle)
    if tag in ("random", "none"):  # no weights file to name them: this handle's weights only
        tag = f"{tag}@{id(handle)}"
    keys = [(f"{handle.card.name}:{tag}", layer_path, _image_key(image)) for image in images]
    out: dict[int, np.ndarray] = {}
    with _cache_lock:
        for i, key in enumerate(keys):
            if key in _cache:
                _cache.move_to_end(key)
                out[i] = _cache[key]
    missing = [i for i in range(len(images)) if i not in out]
    for first in range(0, len(missing), BATCH):
        chunk = missing[first:first + BATCH]
        x = to_model_range(torch.from_numpy(np.stack([images[i] for i in chunk]))[:, None], handle)
        with lock or nullcontext(), torch.inference_mode():
            maps = feature_maps(handle, x, layer_path)[1].float().cpu().numpy()
        with _cache_lock:
            for i, single in zip(chunk, maps, strict=True):
                out[i] = _cache[keys[i]] = single
            while len(_cache) > CACHE_IMAGES:
                _cache.popitem(last=False)
    return [out[i] for i in range(len(images))]


def _neuron_map(handle: ModelHandle, maps: np.ndarray, layer: str, neuron: int) -> np.ndarray:
    if layer == "features":
        if not 0 <= neuron < maps.shape[0]:
            raise ParameterError(f"{handle.card.feature_layer} has {maps.shape[0]} neurons, not neuron {neuron}")
        return maps[neuron]
    weights = head_weights(handle, "features", maps.shape[0])
    if weights is None:
        raise ModelError(f"{handle.card.name} has no linear head on {handle.card.feature_layer}: an output neuron "
                         f"has no activation map")
    if not 0 <= neuron < weights.shape[0]:
        raise ParameterError(f"{handle.card.name} has {weights.shape[0]} output neurons, not neuron {neuron}")
    return np.maximum(np.tensordot(weights[neuron], maps, axes=1), 0.0)


def activation_maps(handle: ModelHandle, layer: str, neuron: int, images: Sequence[np.ndarray], *,
                    lock: AbstractContextManager | None = None) -> list[np.ndarray]:
    """One neuron's activation map on each image, on the layer's own grid (e.g. 7 x 7), unscaled, non-negative.

    `images` are grey [0, 1] pixels [H, W] (resized to the model's input grid where they are not on it); `lock`
    is held around the forward pass (a forward hook is registered on the shared model)."""
    if layer not in LAYERS:
        raise ParameterError(f"layer must be one of {', '.join(LAYERS)}, got '{layer}'")
    size = handle.card.input.size
    grids = _feature_maps(handle, [_as_input(image, size) for image in images], lock)
    return [_neuron_map(handle, maps, layer, neuron).astype(np.float32) for maps in grids]


def overlay_from_map(pixels: np.ndarray, grid: np.ndarray, scale: float | None = None,
                     opacity: float = DEFAULT_OPACITY) -> bytes:
    """PNG of grey pixels [S, S] with an activation grid bilinearly upsampled to them and blended on top, divided
    by `scale` (default: the grid's own peak; 0 stays 0, nothing above the scale is brighter than it)."""
    upsampled = F.interpolate(torch.from_numpy(np.ascontiguousarray(grid, np.float32))[None, None],
                              size=pixels.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    top = float(grid.max()) if scale is None else float(scale)
    heat = np.clip(upsampled / top, 0.0, 1.0) if top > 0 else np.zeros_like(upsampled)
    return png_bytes(blend(pixels, heat, opacity))


def neuron_overlay(handle: ModelHandle, layer: str, neuron: int, image: np.ndarray, *,
                   opacity: float = DEFAULT_OPACITY, scale: float | None = None,
                   lock: AbstractContextManager | None = None) -> bytes:
    """PNG (RGB, the model's input size) of a grey [0, 1] image with one neuron's activation map overlaid: where
    on the image the neuron fires. `scale` as in `overlay_from_map`; `lock` as in `activation_maps`."""
    pixels = _as_input(image, handle.card.input.size)
    grid = activation_maps(handle, layer, neuron, [pixels], lock=lock)[0]
    return overlay_from_map(pixels, grid, scale, opacity)


def representative_overlays(handle: ModelHandle, layer: str, neuron: int, probe: str, image_ids: Sequence[str], *,
                            opacity: float = DEFAULT_OPACITY, lock: AbstractContextManager | None = None
                            ) -> list[bytes]:
    """Overlay PNGs of a neuron on its representative images (ids of the annotation's probing set `probe`), on one
    scale (the strongest map among them), so that the grid also shows how strongly it fires on each image."""
    pixels = probe_images(probe, list(image_ids), handle.card.input.size)[:, 0].numpy()
    grids = activation_maps(handle, layer, neuron, list(pixels), lock=lock)
    top = max((float(grid.max()) for grid in grids), default=0.0)
    return [overlay_from_map(p, grid, top, opacity) for p, grid in zip(pixels, grids, strict=True)]


def clear_cache() -> None:
    """Forget every cached feature map."""
    with _cache_lock:
        _cache.clear()
