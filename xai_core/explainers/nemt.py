"""NEMt (Møller et al. 2025) with target conditioning: one decoder pass over the classifier's pyramid."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from xai_core.explainers.base import ExplainBatch, Explainer, register
from xai_core.models import ModelHandle
from xai_core.nemt import explanation_from_pixels, explanation_from_taps, load_decoder, usable_for


@register
class NEMt(Explainer):
    name = "nemt"
    cost = "fast"
    defaults: ClassVar[dict[str, Any]] = {}
    reuses_forward = True
    batches_requests = True
    unit_range = True

    def available(self, handle: ModelHandle) -> bool:
        return usable_for(handle)

    def _explain(self, handle: ModelHandle, inputs: ExplainBatch) -> torch.Tensor:
        return explanation_from_pixels(handle, inputs.x, inputs.targets)

    def _explain_from_taps(self, handle: ModelHandle, taps: list[torch.Tensor], inputs: ExplainBatch) -> torch.Tensor:
        """Only the decoder runs, on the pyramid of an earlier prediction forward."""
        return explanation_from_taps(load_decoder(handle), taps, inputs.x, inputs.targets)
