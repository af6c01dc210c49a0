"""Model cards, loaded model handles and the model registry."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xai_core.imaging import Radiograph


class ModelError(RuntimeError):
    """A model that cannot be loaded; the message says why and what to do."""


class MissingWeightsError(ModelError):
    """The weights file of a model is not on this machine."""


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


def preprocess(radiograph: Radiograph, spec: InputSpec) -> tuple[torch.Tensor, CropBox]:
    """Radiograph -> network input [C, S, S]: centre square crop, area resize, scale to the card's value range."""
    import cv2

    h, w = radiograph.pixels.shape
    box = center_square(h, w)
    square = radiograph.pixels[box.top : box.top + box.size, box.left : box.left + box.size]
    interpolation = cv2.INTER_AREA if box.size > spec.size else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(square, dtype=np.float32), (spec.size, spec.size),
                         interpolation=interpolation)
    lo, hi = spec.value_range
    scaled = np.clip(resized, 0.0, 1.0) * (hi - lo) + lo
    tensor = torch.from_numpy(scaled).unsqueeze(0).expand(spec.channels, -1, -1).contiguous()
    return tensor, box


@dataclass
class ModelHandle:
    """A loaded classifier: `module(x)` returns logits [B, n_labels]; eval mode, on `device`."""

    card: ModelCard
    module: nn.Module
    device: torch.device
    random_weights: bool = False
    _folded: nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _onnx: dict[tuple[str, int], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def scoring_module(self) -> nn.Module:
        """The classifier for forward passes that need no hooks, built once: every batch norm that directly follows
        a convolution is folded into it (torch.fx). Same logits within float rounding (demo: 4e-6); demo's batch-32
        forward is 11-14% faster on 2 threads of an AVX2 CPU, 4% on one. The plain module where the model cannot be
        traced."""
        if self._folded is None:
            from torch.fx.experimental.optimization import fuse

            try:
                self._folded = fuse(self.module.eval())
            except Exception:  # untraceable forward (data-dependent control flow): nothing is lost but speed
                self._folded = self.module
        return self._folded

    def onnx(self, name: str, build: Callable[[], nn.Module], outputs: int = 1, labels: int = 0) -> Callable | None:
        """`build()`'s forward on ONNX Runtime with as many threads as torch has now (exported and checked once per
        name and thread count; see `onnx_forward`); None off the CPU, where ONNX Runtime cannot run it, or with
        XAI_NO_ONNX set."""
        if self.device.type != "cpu" or os.environ.get("XAI_NO_ONNX"):
            return None
        key = (name, torch.get_num_threads())
        if key not in self._onnx:
            from xai_core.models.onnx_forward import onnx_forward

            self._onnx[key] = onnx_forward(build(), self.card.input, key[1], outputs, labels)
        return self._onnx[key]

    def scorer(self, bfloat16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fastest hook-free forward x -> float32 logits: on a CPU in float32, ONNX Runtime (`onnx`), else
        `scoring_module`, under bfloat16 autocast when asked."""
        if not bfloat16:
            forward = self.onnx("logits", lambda: self.module)
            if forward is not None:
                return forward
        module = self.scoring_module()

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                return module(x.to(self.device)).float()

        return forward

    def layer(self, path: str) -> nn.Module:
        """The sub-module at a dotted path (e.g. 'features.norm5')."""
        return self.module.get_submodule(path)

    def label_index(self, label: str | int) -> int:
        """Index of a label by name (case-insensitive) or index."""
        if isinstance(label, int):
            if not 0 <= label < len(self.card.labels):
                raise KeyError(f"label index {label} out of range for {self.card.name}")
            return label
        lookup = {name.lower(): i for i, name in enumerate(self.card.labels)}
        key = label.strip().lower()
        if key not in lookup:
            raise KeyError(f"'{label}' is not a label of {self.card.name}; labels: {', '.join(self.card.labels)}")
        return lookup[key]


Loader = Callable[[ModelCard, torch.device, bool], ModelHandle]


@dataclass
class RegistryEntry:
    card: ModelCard
    loader: Loader


_REGISTRY: dict[str, RegistryEntry] = {}


def register_model(card: ModelCard, loader: Loader) -> None:
    """Add a model to the registry (name must be unique)."""
    if card.name in _REGISTRY:
        raise ValueError(f"model '{card.name}' is already registered")
    _REGISTRY[card.name] = RegistryEntry(card=card, loader=loader)


def list_models(family: str | None = "classifier") -> list[str]:
    """Names of registered models, optionally of one family."""
    _ensure_builtin()
    return [name for name, entry in _REGISTRY.items() if family is None or entry.card.family == family]


def get_card(name: str) -> ModelCard:
    """The card of a registered model; KeyError naming the known models otherwise."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].card


def load_model(name: str, device: torch.device | str = "cpu", *, allow_random_weights: bool = False) -> ModelHandle:
    """Build a registered model on a device, frozen and in eval mode."""
    card = get_card(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (tests, benchmarks) are the same in every process
        handle = _REGISTRY[name].loader(card, torch.device(device), allow_random_weights)
    handle.module.eval()
    if handle.device.type == "cpu":
        # oneDNN's convolutions and pooling run ~1.8x faster on channels-last weights (demo forward, batch 16,
        # 2 cores: 13 -> 7.5 ms per image; Score-CAM 2.8 -> 1.6 s); logits agree to 3e-5. A 1-channel input is
        # already channels-last, so callers need not convert.
        handle.module.to(memory_format=torch.channels_last)
    for parameter in handle.module.parameters():
        parameter.requires_grad_(False)
    return handle


PRECISIONS = ("auto", "float32", "bfloat16")


def bfloat16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast here: a CUDA GPU with bf16, or a CPU with oneDNN bf16 (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch's own check for oneDNN bf16 kernels (private, but what torch uses to pick them)
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether to run forwards under bfloat16 autocast: 'auto' where the hardware runs it fast, 'float32' never,
    'bfloat16' always (an error where it would be slow)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    supported = bfloat16_supported(device)
    if precision == "bfloat16" and not supported:
        raise ValueError(f"bfloat16 needs a CPU with AVX512-BF16/AMX or a CUDA GPU; {device} has neither: use "
                         f"precision='float32'")
    return precision == "bfloat16" or (precision == "auto" and supported)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_dirs() -> list[Path]:
    """Folders searched for weight files, in order: $XAI_WEIGHTS_DIR, then torchxrayvision's cache."""
    dirs = []
    if os.environ.get("XAI_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["XAI_WEIGHTS_DIR"]).expanduser())
    dirs.append(Path(os.environ.get("XRV_DATA_DIR", Path.home() / ".torchxrayvision")).expanduser() / "models_data")
    return dirs


def find_weights(filename: str) -> Path | None:
    """The first existing copy of a weights file in `weights_dirs()`."""
    for folder in weights_dirs():
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


_builtin_loaded = False


def _ensure_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        from xai_core.models import demo, xrv  # noqa: F401  (register on import; demo first)
