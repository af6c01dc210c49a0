"""Uniform random maps: the control every evaluation must include."""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import torch

from xai_core.explainers.base import Explainer, register, validate_targets
from xai_core.models import ModelHandle


@register
class RandomMap(Explainer):
    name = "random"
    cost = "fast"
    unit_range = True
    defaults: ClassVar[dict[str, Any]] = {"seed": 0}

    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, **params) -> torch.Tensor:
        p = self.params(**params)
        validate_targets(handle, targets)
        maps = torch.empty((x.shape[0], *x.shape[-2:]))
        for b, image in enumerate(x):
            # seeded by the image's content: the same image gets the same map whatever the target or the batch
            content = zlib.crc32(image.detach().cpu().float().numpy().tobytes())
            generator = torch.Generator().manual_seed(int(p["seed"]) * 2**32 + content)
            maps[b] = torch.rand(x.shape[-2:], generator=generator)
        return maps.to(handle.device)
