"""The NEMt decoder: a target-conditioned U-Net decoder over a frozen classifier's pyramid, and its smoothing."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

SMOOTH_SIZE = 21
KEEP_BIAS = 2.0  # initial keep-mask logit where the classifier sees no evidence (sigmoid 0.88)
_INSTANCES = itertools.count()  # a decoder's `instance`: unique for the process's lifetime (ids are reused)
CAM_SCALE = 0.15  # demo: a positive finding's CAM peaks at 7-54 (median 37), a negative's at 3 or less (90th pct.)


class Pointwise(nn.Conv2d):
    """A 1x1 convolution computed as one matrix product: at batch 1 on CPU, oneDNN's 1x1 convolutions with few
    output channels cost many times more than the product (docs/benchmarks.md)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(self.weight.flatten(1), x.flatten(2)).view(x.shape[0], -1, *x.shape[-2:])
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class LabelPointwise(nn.Module):
    """A 1x1 convolution to one channel with a weight row and bias per label; each sample uses its target's."""

    def __init__(self, in_channels: int, num_labels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.weight = nn.Parameter(torch.empty(num_labels, in_channels))
        self.bias = nn.Parameter(torch.empty(num_labels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default, per label
        nn.init.uniform_(self.bias, -1 / math.sqrt(in_channels), 1 / math.sqrt(in_channels))

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bias = self.bias[targets].view(-1, 1, 1, 1)
        if self.in_channels == 1:  # one fused op (a grey input): cheaper than the product (docs/benchmarks.md)
            return torch.addcmul(bias, x, self.weight[targets].view(-1, 1, 1, 1))
        out = torch.bmm(self.weight[targets].unsqueeze(1), x.flatten(2)).view(x.shape[0], 1, *x.shape[-2:])
        return out + bias


class FiLMBlock(nn.Module):
    """x2 upsample, concatenate the projected skip, two 3x3 conv + BatchNorm + SiLU; FiLM after the first."""

    def __init__(self, in_channels: int, skip_channels: int, width: int, embed_dim: int) -> None:
        super().__init__()
        self.skip = Pointwise(skip_channels, width, bias=False)
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

    def fold_norms(self) -> None:
        """Fold each (eval-mode) batch norm into the convolution before it; the outputs stay the same."""
        self.conv1 = fuse_conv_bn_eval(self.conv1, self.norm1)
        self.conv2 = fuse_conv_bn_eval(self.conv2, self.norm2)
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()


class NEMtDecoder(nn.Module):
    """Keep-mask logits [B, 1, H, W] from the pyramid (taps shallow to deep), the input and the target label.

    FiLM-conditioned up-blocks (one per entry of `widths`) climb the deepest skip levels; each shallower level, and
    then the input, adds the target's own 1x1 head to the logits as they are upsampled to input resolution (FCN's
    skip heads, one per label: with label-blind heads the maps of two findings in one image correlated 0.5-0.7, each
    deleting both). `input_kernel` 3 reads configs from before 2026-11-30: one 3x3 input head for every label.

    Beyond the paper's decoder, which has an up-block at every level: at batch 1 on CPU an up-block is not cheap
    next to a classifier forward (more at finer levels, mostly per-op overhead), and the 21 px smoothing of the
    keep-mask leaves fine levels little to add. On demo one block costs a fraction of four (48, 24, 12, 6 channels)
    per map and reached a higher relevance mass on test positives (timings: docs/benchmarks.md; scores:
    docs/models.md).

    `cam_readout` (beyond the paper): the logits also get a per-label keep bias minus the target's class activation
    map, a 1x1 readout of the bottleneck that `init_cam_readout` starts from the classifier's own head. Deletion then
    starts where the classifier's evidence for the target is, so the deletion term has a gradient from the first
    step; trained from a uniform start, the decoder settles on masks that delete about half of every image, positive
    and negative targets alike (100 steps: relevance mass 0.025, the lesion's area fraction).
    """

    def __init__(self, tap_channels: list[int], num_labels: int, in_channels: int = 1,
                 widths: tuple[int, ...] = (32,), embed_dim: int = 32, input_scale: float = 1.0,
                 cam_readout: bool = True, input_kernel: int = 1) -> None:
        super().__init__()
        self.instance = next(_INSTANCES)
        if not 1 <= len(widths) <= len(tap_channels) - 1:
            raise ValueError(f"{len(widths)} widths for {len(tap_channels) - 1} skip levels")
        self.config = {"tap_channels": list(tap_channels), "num_labels": num_labels, "in_channels": in_channels,
                       "widths": list(widths), "embed_dim": embed_dim, "input_scale": input_scale,
                       "cam_readout": cam_readout, "input_kernel": input_kernel}
        self.input_scale = input_scale
        self.labels = nn.Embedding(num_labels, embed_dim)
        self.bottleneck = Pointwise(tap_channels[-1], widths[0])
        skips = list(reversed(tap_channels[:-1]))
        blocks, previous = [], widths[0]
        for skip, width in zip(skips, widths, strict=False):
            blocks.append(FiLMBlock(previous, skip, width, embed_dim))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.head = Pointwise(previous, 1)
        self.skip_heads = nn.ModuleList(LabelPointwise(skip, num_labels) for skip in skips[len(widths):])
        self.input_head = (LabelPointwise(in_channels, num_labels) if input_kernel == 1
                           else nn.Conv2d(in_channels, 1, input_kernel, padding=input_kernel // 2))
        self.cam = Pointwise(tap_channels[-1], num_labels, bias=False) if cam_readout else None
        self.keep_bias = nn.Parameter(torch.full((num_labels,), KEEP_BIAS)) if cam_readout else None
        if self.cam is not None:
            nn.init.zeros_(self.cam.weight)

    @classmethod
    def from_config(cls, config: dict) -> NEMtDecoder:
        """A decoder from its `config` (as stored in the manifest); keys that older configs lack take the values
        those decoders had (no CAM readout, a 3x3 input head)."""
        return cls(config["tap_channels"], config["num_labels"], config["in_channels"], tuple(config["widths"]),
                   config["embed_dim"], config["input_scale"], config.get("cam_readout", False),
                   config.get("input_kernel", 3))

    def fold_norms(self) -> NEMtDecoder:
        """For inference: fold the up-blocks' batch norms into their convolutions (same outputs, fewer ops)."""
        if self.training:
            raise RuntimeError("fold_norms needs an eval-mode decoder (batch norms use running statistics)")
        for block in self.blocks:
            block.fold_norms()
        return self

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
        skips = list(reversed(taps[:-1]))
        for block, skip in zip(self.blocks, skips, strict=False):
            h = block(h, skip, label)
        logits = self.head(h)
        if self.cam is not None:
            cam = self.cam(taps[-1]).gather(1, targets.view(-1, 1, 1, 1).expand(-1, 1, *taps[-1].shape[-2:]))
            cam = F.interpolate(cam, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + self.keep_bias[targets].view(-1, 1, 1, 1) - cam
        for head, skip in zip(self.skip_heads, skips[len(self.blocks):], strict=True):
            logits = (F.interpolate(logits, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                      + head(skip, targets))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        scaled = x * self.input_scale
        return logits + (self.input_head(scaled, targets) if isinstance(self.input_head, LabelPointwise)
                         else self.input_head(scaled))


def random_kernel(generator: torch.Generator, size: int = SMOOTH_SIZE) -> torch.Tensor:
    """A size x size kernel with weights uniform in [0, 1), normalised to sum 1 (a new one every training step)."""
    kernel = torch.rand(size, size, generator=generator)
    return (kernel / kernel.sum()).view(1, 1, size, size)


def box_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over size x size windows with replicate padding, from running sums along rows then columns (O(1) per
    pixel; float32 sums of a [0, 1] map stay within 1e-5 of the exact mean at 224 px)."""
    pad = size // 2
    padded = F.pad(x, (pad + 1, pad, pad + 1, pad), mode="replicate")
    padded[..., 0, :] = 0
    padded[..., :, 0] = 0
    rows = padded.cumsum(-1)
    rows = (rows[..., size:] - rows[..., :-size]).cumsum(-2)
    return (rows[..., size:, :] - rows[..., :-size, :]) / (size * size)


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
    """Smoothed keep-mask m in [0, 1], [B, 1, H, W] (clamped: float32 running sums can stray by ~1e-7)."""
    return smooth(torch.sigmoid(decoder(taps, x, targets)), kernel).clamp(0, 1)
