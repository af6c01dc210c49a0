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


@register
class ScoreCAM(Explainer):
    name = "scorecam"
    cost = "slow"
    defaults: ClassVar[dict[str, Any]] = {"layer": None, "batch": 64, "top_k": None}

    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, **params) -> torch.Tensor:
        p = self.params(**params)
        x = x.to(handle.device)
        with torch.inference_mode():
            with capture_activations(handle.layer(p["layer"] or handle.card.cam_layer)) as store:
                handle.module(x)
            activations = store["activations"].float()
            maps = []
            for b in range(x.shape[0]):
                channels = activations[b]
                if p["top_k"]:
                    keep = channels.mean((1, 2)).topk(min(int(p["top_k"]), channels.shape[0])).indices
                    channels = channels[keep]
                masks = channel_masks(channels, x.shape[-2:])
                scores = torch.empty(len(masks), device=x.device)
                for start in range(0, len(masks), int(p["batch"])):
                    chunk = masks[start:start + int(p["batch"])]
                    inputs = x[b:b + 1] * chunk.unsqueeze(1)
                    scores[start:start + len(chunk)] = target_logits(handle.module(inputs),
                                                                     targets[b].repeat(len(chunk)))
                weights = scores.softmax(0)
                maps.append(torch.relu((weights[:, None, None] * channels).sum(0)))
            cams = torch.stack(maps)
        return upsample(cams, x.shape[-2:]).clamp_min(0)
