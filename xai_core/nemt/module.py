"""The NEMt decoder: a target-conditioned U-Net decoder over a frozen classifier's pyramid, and its smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH_SIZE = 21
KEEP_BIAS = 2.0  # initial keep-mask logit where the classifier sees no evidence (sigmoid 0.88)
CAM_SCALE = 0.15  # demo: a positive finding's CAM peaks at 7-54 (median 37), a negative's at 3 or less (90th pct.)


class FiLMBlock(nn.Module):
    """x2 upsample, concatenate the projected skip, two 3x3 conv + BatchNorm + SiLU; FiLM after the first."""

    def __init__(self, in_channels: int, skip_channels: int, width: int, embed_dim: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(skip_channels, width, 1, bias=False)
        self.conv1 = nn.Conv2d(in_channels + width, width, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.film = nn.Linear(embed_dim, 2 * width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        h = self.norm1(self.conv1(torch.cat([x, self.skip(skip)], 1)))
        scale, shift = self.film(label).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = F.silu(h * (1 + scale) + shift)
        return F.silu(self.norm2(self.conv2(h)))


class NEMtDecoder(nn.Module):
    """Keep-mask logits [B, 1, H, W] from the pyramid (taps shallow to deep), the input and the target label.

    One FiLM-conditioned up-block per tapped level (deep to shallow); the last level's 1x1 head, upsampled, plus a
    3x3 head over the input itself give the logits at input resolution. Widths halve towards the input: the
    keep-mask is smoothed by a 21 px kernel afterwards, so fine levels need few channels, and the decoder costs
    about half the demo classifier's forward.

    `cam_readout` (beyond the paper): the logits also get a per-label keep bias minus the target's class activation
    map, a 1x1 readout of the bottleneck that `init_cam_readout` starts from the classifier's own head. Deletion then
    starts where the classifier's evidence for the target is, so the deletion term has a gradient from the first
    step; trained from a uniform start, the decoder settles on masks that delete about half of every image, positive
    and negative targets alike (100 steps: relevance mass 0.025, the lesion's area fraction).
    """

    def __init__(self, tap_channels: list[int], num_labels: int, in_channels: int = 1,
                 widths: tuple[int, ...] = (48, 24, 12, 6), embed_dim: int = 32, input_scale: float = 1.0,
                 cam_readout: bool = True) -> None:
        super().__init__()
        if len(widths) != len(tap_channels) - 1:
            raise ValueError(f"{len(widths)} widths for {len(tap_channels) - 1} skip levels")
        self.config = {"tap_channels": list(tap_channels), "num_labels": num_labels, "in_channels": in_channels,
                       "widths": list(widths), "embed_dim": embed_dim, "input_scale": input_scale,
                       "cam_readout": cam_readout}
        self.input_scale = input_scale
        self.labels = nn.Embedding(num_labels, embed_dim)
        self.bottleneck = nn.Conv2d(tap_channels[-1], widths[0], 1)
        blocks, previous = [], widths[0]
        for skip, width in zip(reversed(tap_channels[:-1]), widths, strict=True):
            blocks.append(FiLMBlock(previous, skip, width, embed_dim))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(previous, 1, 1)
        self.input_head = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.cam = nn.Conv2d(tap_channels[-1], num_labels, 1, bias=False) if cam_readout else None
        self.keep_bias = nn.Parameter(torch.full((num_labels,), KEEP_BIAS)) if cam_readout else None
        if self.cam is not None:
            nn.init.zeros_(self.cam.weight)

    def init_cam_readout(self, head: nn.Linear, outputs: torch.Tensor, scale: float = CAM_SCALE) -> None:
        """Start the CAM readout from a classifier's linear head (rows `outputs`), scaled to keep-mask logits."""
        if self.cam is None:
            raise ValueError("this decoder has no CAM readout")
        with torch.no_grad():
            self.cam.weight.copy_(scale * head.weight[outputs.to(head.weight.device)][:, :, None, None])

    def forward(self, taps: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(x.device)
        label = self.labels(targets)
        h = self.bottleneck(taps[-1])
        for block, skip in zip(self.blocks, reversed(taps[:-1]), strict=True):
            h = block(h, skip, label)
        logits = F.interpolate(self.head(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.cam is not None:
            cam = self.cam(taps[-1]).gather(1, targets.view(-1, 1, 1, 1).expand(-1, 1, *taps[-1].shape[-2:]))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + self.keep_bias[targets].view(-1, 1, 1, 1) - cam
        return logits + self.input_head(x * self.input_scale)


def random_kernel(generator: torch.Generator, size: int = SMOOTH_SIZE) -> torch.Tensor:
    """A size x size kernel with weights uniform in [0, 1), normalised to sum 1 (a new one every training step)."""
    kernel = torch.rand(size, size, generator=generator)
    return (kernel / kernel.sum()).view(1, 1, size, size)


def box_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over size x size windows with replicate padding, from an integral image (O(1) per pixel; ~10x faster
    than avg_pool2d with a 21x21 window on CPU)."""
    pad = size // 2
    padded = F.pad(x, (pad + 1, pad, pad + 1, pad), mode="replicate").double()
    padded[..., 0, :] = 0
    padded[..., :, 0] = 0
    integral = padded.cumsum(-1).cumsum(-2)
    total = (integral[..., size:, size:] - integral[..., :-size, size:] - integral[..., size:, :-size]
             + integral[..., :-size, :-size])
    return (total / (size * size)).to(x.dtype)


def smooth(mask: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve a keep-mask [B, 1, H, W] with `kernel` (replicate padding), or with the 21x21 box (its
    expectation) when none is given, which is what inference uses."""
    if kernel is None:
        return box_filter(mask, SMOOTH_SIZE)
    return fft_conv(mask, kernel.to(mask))


def fft_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same-size correlation of [B, 1, H, W] with a [1, 1, k, k] kernel (replicate padding) through the FFT: a
    dense 21x21 single-channel convolution is slow on CPU, forwards and backwards."""
    k = kernel.shape[-1]
    pad = k // 2
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    h, w = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=(h, w)) * torch.fft.rfft2(kernel.flip(-1, -2), s=(h, w))
    full = torch.fft.irfft2(spectrum, s=(h, w))
    return full[..., k - 1:, k - 1:][..., : x.shape[-2], : x.shape[-1]]


def keep_mask(decoder: NEMtDecoder, taps: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
              kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Smoothed keep-mask m in [0, 1], [B, 1, H, W]."""
    return smooth(torch.sigmoid(decoder(taps, x, targets)), kernel)
