"""Score-CAM (Wang et al. 2020): activation maps as input masks, weighted by the target score they keep."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from xai_core.explainers.base import Explainer, capture_activations, register, target_logits, upsample
from xai_core.models import ModelHandle


def channel_masks(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[K, h, w] -> [K, H, W]: bilinear upsampling (corners aligned, as in the reference), min-max per channel."""
    up = F.interpolate(activations.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]
    flat = up.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None])


def bfloat16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast here: a CUDA GPU with bf16, or a CPU with oneDNN bf16 (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch's own check for oneDNN bf16 kernels (private, but what torch uses to pick them)
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@register
class ScoreCAM(Explainer):
    name = "scorecam"
    cost = "slow"
    # batch 16: the fastest masked-forward batch on a 2-core CPU (4.4 s vs 5.7 s at 64 for demo).
    # precision: "bfloat16" runs the masked forwards (only they: the activations stay float32) under autocast,
    # 1.5x faster again on AMX CPUs, maps correlating at 0.9999 with float32 (benchmarks/explainers.py);
    # "auto" (default) uses it where the hardware runs it fast, else float32.
    defaults: ClassVar[dict[str, Any]] = {"layer": None, "batch": 16, "top_k": None, "precision": "auto"}

    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, **params) -> torch.Tensor:
        p = self.params(**params)
        if p["precision"] not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {p['precision']!r}")
        x = x.to(handle.device)
        supported = bfloat16_supported(x.device)
        fast = p["precision"] == "bfloat16" or (p["precision"] == "auto" and supported)
        if fast and not supported:
            raise ValueError(f"bfloat16 Score-CAM needs a CPU with AVX512-BF16/AMX or a CUDA GPU; {x.device} has "
                             f"neither: use precision='float32'")
        with torch.inference_mode():
            with capture_activations(handle.layer(p["layer"] or handle.card.cam_layer)) as store:
                handle.module(x)
            activations = store["activations"].float()
            maps = []
            masked_logits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (image, channels, logits)
            for b in range(x.shape[0]):
                # the masked forwards score every label at once: a repeated image (several targets) reuses them
                seen = next((entry for entry in masked_logits if torch.equal(entry[0], x[b])), None)
                if seen is None:
                    channels = activations[b]
                    if p["top_k"]:
                        keep = channels.mean((1, 2)).topk(min(int(p["top_k"]), channels.shape[0])).indices
                        channels = channels[keep]
                    masks = channel_masks(channels, x.shape[-2:])
                    logits = []
                    for start in range(0, len(masks), int(p["batch"])):
                        inputs = x[b:b + 1] * masks[start:start + int(p["batch"])].unsqueeze(1)
                        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=fast):
                            logits.append(handle.module(inputs).float())
                    seen = (x[b], channels, torch.cat(logits))
                    masked_logits.append(seen)
                _, channels, logits = seen
                weights = target_logits(logits, targets[b].repeat(len(logits))).softmax(0)
                maps.append(torch.relu((weights[:, None, None] * channels).sum(0)))
            cams = torch.stack(maps)
        return upsample(cams, x.shape[-2:]).clamp_min(0)
