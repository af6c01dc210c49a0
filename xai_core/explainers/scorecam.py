"""Score-CAM (Wang et al. 2020): activation maps as input masks, weighted by the target score they keep."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from xai_core.explainers.base import ExplainBatch, Explainer, capture_activations, register, upsample
from xai_core.jobs import checkpoint, chunk_size
from xai_core.models import ModelHandle, target_logits
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
    # batch 16: the fastest masked-forward batch we measured on a 2-core CPU (64 was slower; docs/benchmarks.md).
    # precision: "bfloat16" runs the masked forwards (only they: the activations stay float32) under autocast,
    # faster where the hardware runs bfloat16 fast, for maps that barely differ from float32's
    # (docs/benchmarks.md); "auto" (default) uses it where the hardware runs it fast, else float32.
    defaults: ClassVar[dict[str, Any]] = {"layer": None, "batch": 16, "top_k": None, "precision": "auto"}

    def _explain(self, handle: ModelHandle, inputs: ExplainBatch, *, layer: str | None, batch: int,
                 top_k: int | None, precision: str) -> torch.Tensor:
        x, targets = inputs.x, inputs.targets
        forward = handle.scorer(use_bfloat16(precision, x.device))
        cams = torch.empty((x.shape[0], 0, 0), device=x.device)
        with torch.inference_mode():
            with capture_activations(handle.layer(layer or handle.card.cam_layer)) as store:
                handle.module(x[[rows[0] for rows in inputs.groups]])
            for activations, rows in zip(store["activations"].float(), inputs.groups, strict=True):
                # the masked forwards score every label at once: a repeated image (several targets) reuses them
                channels = activations
                if top_k:
                    channels = channels[channels.mean((1, 2)).topk(min(int(top_k), channels.shape[0])).indices]
                masks = channel_masks(channels, x.shape[-2:])
                image = x[rows[0]:rows[0] + 1]
                chunks = []
                step = chunk_size(batch)  # smaller inside a background job: waiting fast work is served sooner
                for start in range(0, len(masks), step):
                    checkpoint()  # the capture hook is gone and masked forwards keep no graph
                    chunks.append(forward(image * masks[start:start + step].unsqueeze(1)).to(x.device))
                logits = torch.cat(chunks)
                if cams.shape[1] == 0:
                    cams = torch.zeros((x.shape[0], *channels.shape[-2:]), device=x.device)
                for row in rows:
                    weights = target_logits(logits, targets[row].repeat(len(logits))).softmax(0)
                    cams[row] = torch.relu((weights[:, None, None] * channels).sum(0))
        return upsample(cams, x.shape[-2:]).clamp_min(0)
