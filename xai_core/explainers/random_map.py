"""Uniform random maps: the control every evaluation must include."""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import torch

from xai_core.explainers.base import ExplainBatch, Explainer, register
from xai_core.models import ModelHandle


@register
class RandomMap(Explainer):
    name = "random"
    cost = "fast"
    unit_range = True
    defaults: ClassVar[dict[str, Any]] = {"seed": 0}

    def _explain(self, handle: ModelHandle, inputs: ExplainBatch, *, seed: int) -> torch.Tensor:
        x = inputs.x
        maps = torch.empty((x.shape[0], *x.shape[-2:]))
        for rows in inputs.groups:
            # seeded by the image's content: the same image gets the same map whatever the target or the batch
            content = zlib.crc32(x[rows[0]].detach().cpu().numpy().tobytes())
            generator = torch.Generator().manual_seed(int(seed) * 2**32 + content)
            maps[rows] = torch.rand(x.shape[-2:], generator=generator)
        return maps.to(handle.device)
