"""Anatomy segmenters behind one interface: a radiograph -> named binary masks at model-input resolution."""

from __future__ import annotations

import torch
from torch import nn

from xai_core.models.base import ModelHandle
from xai_core.models.bundled import bundled_handle
from xai_core.models.cards import InputSpec, ModelCard
from xai_core.phantom import ANATOMY


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
        )


class UNet(nn.Module):
    """A small U-Net with one sigmoid output channel per structure (structures may overlap).

    The stem halves the resolution and the logits are upsampled back: anatomy needs no full-resolution decoder,
    and this makes a training step several times cheaper on CPU (docs/benchmarks.md).
    """

    def __init__(self, out_channels: int, widths: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.SiLU())
        self.encoders = nn.ModuleList()
        cin = widths[0]
        for width in widths:
            self.encoders.append(_Down(cin, width))
            cin = width
        self.decoders = nn.ModuleList()
        for skip, width in zip(widths[-2::-1], widths[:0:-1], strict=True):
            self.decoders.append(_Down(width + skip, skip))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x / 1024.0)
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        for decoder, skip in zip(self.decoders, skips[-2::-1], strict=True):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = decoder(torch.cat([x, skip], 1))
        return nn.functional.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


def segment(handle: ModelHandle, x: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Named boolean masks [B, S, S] for an input batch [B, C, S, S]."""
    with torch.inference_mode():
        probabilities = torch.sigmoid(handle.module(x.to(handle.device)).float())
    return {name: probabilities[:, i] >= threshold for i, name in enumerate(handle.card.labels)}


def segmenter_card(name: str, entry: dict) -> ModelCard:
    """The card of a demo segmenter from its manifest entry (one "lesion" label: a class-agnostic lesion
    segmenter)."""
    lesion = entry.get("labels") == ["lesion"]
    what = "the lesions (every finding's, one mask)" if lesion else "the anatomy"
    return ModelCard(
        name=name,
        labels=list(entry.get("labels", ANATOMY)),
        input=InputSpec(1, entry.get("input", {}).get("size", 224), (-1024.0, 1024.0)),
        cam_layer="",
        feature_layer="",
        thresholds=dict.fromkeys(entry.get("labels", ANATOMY), 0.5),
        provenance={"source": "trained by xai_core/training on synthetic phantom data",
                    "weights_sha256": entry.get("sha256"), "command": entry.get("command"),
                    "metrics": entry.get("metrics"), "architecture": entry.get("architecture", {})},
        intended_use=f"Demonstration only: segments {what} of synthetic phantom radiographs. Not for clinical use.",
        family="segmenter",
        weights_file=entry.get("file", f"{name}.pt"),
    )


def load_unet(card: ModelCard, device: torch.device, allow_random_weights: bool) -> ModelHandle:
    widths = tuple(card.provenance.get("architecture", {}).get("widths", (16, 32, 64, 128)))
    rebuild = "python -m xai_core train segmenter" + ("" if card.name == "demo-anatomy" else f" --name {card.name}")
    return bundled_handle(card, UNet(len(card.labels), widths), device, allow_random_weights, rebuild)
