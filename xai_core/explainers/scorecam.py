"""Score-CAM (Wang et al. 2020): activation maps as input masks, weighted by the target score they keep."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from xai_core.explainers.base import Explainer, capture_activations, register, target_logits, upsample
from xai_core.models import ModelHandle
from xai_core.models.base import use_bfloat16


def channel_masks(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[K, h, w] -> [K, H, W]: bilinear upsampling (corners aligned, as in the reference), min-max per channel."""
    up = F.interpolate(activations.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]
    flat = up.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None])


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
        x = x.to(handle.device)
        fast = use_bfloat16(p["precision"], x.device)
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
                    logits, forward = [], handle.scorer(fast)
                    for start in range(0, len(masks), int(p["batch"])):
                        inputs = x[b:b + 1] * masks[start:start + int(p["batch"])].unsqueeze(1)
                        logits.append(forward(inputs).to(x.device))
                    seen = (x[b], channels, torch.cat(logits))
                    masked_logits.append(seen)
                _, channels, logits = seen
                weights = target_logits(logits, targets[b].repeat(len(logits))).softmax(0)
                maps.append(torch.relu((weights[:, None, None] * channels).sum(0)))
            cams = torch.stack(maps)
        return upsample(cams, x.shape[-2:]).clamp_min(0)
