"""The frozen classifier's feature pyramid for NEMt, read in the same pass that gives the logits (no hooks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_core.models.base import ModelHandle
from xai_core.models.densenet import DenseNetLogits

# Outputs of these children of `features` are the skips, shallow to deep; the last is the bottleneck (after ReLU).
DENSENET_TAPS = ("relu0", "denseblock1", "denseblock2", "denseblock3", "norm5")


def supports_pyramid(module: nn.Module) -> bool:
    """True for classifiers whose pyramid NEMt can tap (torchvision-layout DenseNets behind `DenseNetLogits`)."""
    return isinstance(module, DenseNetLogits) and all(hasattr(module.features, n) for n in DENSENET_TAPS)


def pyramid_forward(module: DenseNetLogits, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [B, L], taps shallow to deep) from one forward of the classifier."""
    if not supports_pyramid(module):
        raise TypeError(f"NEMt needs a DenseNet classifier with features.{{{', '.join(DENSENET_TAPS)}}}; "
                        f"got {type(module).__name__}")
    taps = []
    h = x
    for name, child in module.features.named_children():
        h = child(h)
        if name in DENSENET_TAPS:
            taps.append(F.relu(h) if name == "norm5" else h)
    pooled = F.adaptive_avg_pool2d(taps[-1], 1).flatten(1)
    logits = module.classifier(pooled).index_select(1, module.outputs)
    return logits, taps


class _PyramidOutputs(nn.Module):
    """`pyramid_forward` as one module with a flat output (logits, tap, tap, ...), for export."""

    def __init__(self, module: DenseNetLogits) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, taps = pyramid_forward(self.module, x)
        return (logits, *taps)


def handle_pyramid(handle: ModelHandle, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`pyramid_forward` of a loaded classifier, run where it is fastest: ONNX Runtime on a CPU (docs/benchmarks.md),
    else PyTorch. Call under torch.inference_mode()."""
    if supports_pyramid(handle.module):
        forward = handle.onnx("pyramid", lambda: _PyramidOutputs(handle.module), 1 + len(DENSENET_TAPS))
        if forward is not None:
            logits, *taps = forward(x)
            return logits, taps
    return pyramid_forward(handle.module, x.to(handle.device))


def tap_channels(module: DenseNetLogits, in_channels: int) -> list[int]:
    """Channel count of each tap (from a dry run at 64 px)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        device = next(module.parameters()).device
        _, taps = pyramid_forward(module, torch.zeros(1, in_channels, 64, 64, device=device))
    module.train(was_training)
    return [t.shape[1] for t in taps]
