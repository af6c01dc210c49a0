"""Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of d logit / d A."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from xai_core.explainers.base import ExplainBatch, Explainer, capture_activations, register, upsample
from xai_core.models import ModelHandle, target_logits


def layer_gradients(handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, layer: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations A, d logit_target / d A (only the layers after `layer` are differentiated) and the logits."""
    with torch.enable_grad(), capture_activations(handle.layer(layer), cut=True) as store:
        logits = handle.module(x.to(handle.device))
        scores = target_logits(logits, targets)
        (grads,) = torch.autograd.grad(scores.sum(), store["activations"])
    return store["activations"].detach(), grads, logits.detach()


@register
class GradCAM(Explainer):
    name = "gradcam"
    cost = "fast"
    batches_requests = True
    defaults: ClassVar[dict[str, Any]] = {"layer": None}

    def _explain(self, handle: ModelHandle, inputs: ExplainBatch, *, layer: str | None) -> torch.Tensor:
        activations, grads, _ = layer_gradients(handle, inputs.x, inputs.targets, layer or handle.card.cam_layer)
        cam = torch.relu((self.channel_weights(activations, grads) * activations).sum(1))
        return upsample(cam, inputs.x.shape[-2:]).clamp_min(0)

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """[B, K, 1, 1]: the spatial mean of the gradients."""
        return grads.mean(dim=(2, 3), keepdim=True)
