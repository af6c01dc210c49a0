"""The NEMt objective in its deletion form."""

from __future__ import annotations

import torch
from torch import nn

from xai_core.models.base import target_logits

LAMBDA = 2.0


def nemt_loss(classifier: nn.Module, x: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
              p_original: torch.Tensor, *, lam: float = LAMBDA, fill: float | torch.Tensor = 0.0
              ) -> tuple[torch.Tensor, dict]:
    """L = (1 - mean(m)) + lam * (1 - drop^2), drop = p_c(x) - p_c(x * m) clamped at 0, per sample, averaged.

    The classifier sees x * m + fill * (1 - m) in its own input space; `fill` is a value or an image like x (an
    in-distribution fill from `xai_core.removal`, e.g. the image's fully-removed version). `p_original` is p_c(x)
    (sigmoid), already gathered per sample. The drop is clamped at 0: a deletion that raises the target's score
    (inventing evidence for a negative target) earns nothing, so a negative target's best mask keeps everything.
    """
    occluded = x * mask + fill * (1 - mask)
    p_occluded = torch.sigmoid(target_logits(classifier(occluded), targets))
    drop = (p_original - p_occluded).clamp(min=0)
    area = 1 - mask.mean(dim=(1, 2, 3))
    loss = area + lam * (1 - drop ** 2)
    return loss.mean(), {"area": float(area.detach().mean()), "drop": float(drop.detach().mean())}
