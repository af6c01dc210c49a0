"""NEMt (Møller et al. 2025) with target conditioning: one decoder pass over the classifier's pyramid."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from xai_core.explainers.base import Explainer, register, validate_targets
from xai_core.models import ModelHandle


@register
class NEMt(Explainer):
    name = "nemt"
    cost = "fast"
    defaults: ClassVar[dict[str, Any]] = {}
    reuses_forward = True
    unit_range = True

    def available(self, handle: ModelHandle) -> bool:
        from xai_core.nemt import usable_for

        return usable_for(handle)

    def explain(self, handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, **params: Any) -> torch.Tensor:
        from xai_core.nemt import explanation_from_pixels

        validate_targets(handle, targets)
        return explanation_from_pixels(handle, x, targets)

    def explain_from_taps(self, handle: ModelHandle, taps: list[torch.Tensor], x: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
        """The same map from a pyramid kept by an earlier prediction forward: only the decoder runs."""
        from xai_core.nemt import explanation_from_taps, load_decoder

        validate_targets(handle, targets)
        return explanation_from_taps(load_decoder(handle), taps, x.to(handle.device), targets)
