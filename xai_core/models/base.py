"""Loaded model handles: preprocessing, forwards (PyTorch, folded, ONNX Runtime), labels, precision, weight files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from xai_core.errors import ParameterError, TargetError
from xai_core.imaging import Radiograph
from xai_core.models.cards import CropBox, InputSpec, ModelCard, center_square, to_model_range
from xai_core.models.onnx_forward import onnx_forward


def preprocess(radiograph: Radiograph, spec: InputSpec) -> tuple[torch.Tensor, CropBox]:
    """Radiograph -> network input [C, S, S]: centre square crop, area resize, scale to the card's value range."""
    h, w = radiograph.pixels.shape
    box = center_square(h, w)
    square = radiograph.pixels[box.top : box.top + box.size, box.left : box.left + box.size]
    interpolation = cv2.INTER_AREA if box.size > spec.size else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(square, dtype=np.float32), (spec.size, spec.size),
                         interpolation=interpolation)
    return torch.from_numpy(to_model_range(resized, spec)), box


@dataclass
class ModelHandle:
    """A loaded classifier: `module(x)` returns logits [B, n_labels]; eval mode, on `device`."""

    card: ModelCard
    module: nn.Module
    device: torch.device
    random_weights: bool = False
    _folded: nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _onnx: dict[tuple[str, int], Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A fact about this handle (e.g. whether a method can run for it), computed once."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def forget(self, key: str) -> None:
        """Drop a memoised fact (its inputs changed)."""
        self._memo.pop(key, None)

    def scoring_module(self) -> nn.Module:
        """The classifier for forward passes that need no hooks, built once: every batch norm that directly follows
        a convolution is folded into it (torch.fx; same logits within float rounding, faster: docs/benchmarks.md).
        The plain module where the model cannot be traced."""
        if self._folded is None:
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
        """Index of a label by name (case-insensitive) or index; TargetError for a label the model does not have."""
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= label < len(self.card.labels):
                raise TargetError(f"target index {label} out of range for {self.card.name} "
                                  f"({len(self.card.labels)} labels: {', '.join(self.card.labels)})")
            return int(label)
        lookup = {name.lower(): i for i, name in enumerate(self.card.labels)}
        key = str(label).strip().lower()
        if key not in lookup:
            raise TargetError(f"'{label}' is not a label of {self.card.name}; labels: "
                              f"{', '.join(self.card.labels)}")
        return lookup[key]

    def check_targets(self, targets: torch.Tensor) -> None:
        """TargetError for label indices [B] the model does not have."""
        bad = (targets < 0) | (targets >= len(self.card.labels))
        if bool(bad.any()):
            self.label_index(int(targets[bad][0]))


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits[b, targets[b]] for each b (gathered, never a B x B matrix)."""
    return logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)


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
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    supported = bfloat16_supported(device)
    if precision == "bfloat16" and not supported:
        raise ParameterError(f"bfloat16 needs a CPU with AVX512-BF16/AMX or a CUDA GPU; {device} has neither: use "
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
