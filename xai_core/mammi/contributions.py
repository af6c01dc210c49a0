"""Which feature-layer neurons drive one finding on one image, with their MAMMI concepts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xai_core.mammi.store import AnnotationStore


def neuron_contributions(maps: np.ndarray, weights: np.ndarray, target: int, k: int, size: int,
                         store: AnnotationStore | None = None) -> list[dict[str, Any]]:
    """The k neurons with the largest contribution (head weight x pooled activation) to the target's logit.

    `maps` [K, h, w] are one image's feature-layer activations, `weights` [L, K] the linear head. Each entry has its
    contribution, activation, weight, MAMMI concepts (from `store`, empty without one) and its activation map on a
    size x size grid, scaled to [0, 1].
    """
    pooled = maps.mean((1, 2))
    contribution = weights[target] * pooled
    out = []
    for neuron in np.argsort(-contribution, kind="stable")[:k]:
        grid = torch.from_numpy(np.ascontiguousarray(maps[neuron]))[None, None]
        spatial = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        peak = float(spatial.max())
        record = store.neuron(int(neuron)) if store is not None else None
        out.append({
            "neuron": int(neuron), "contribution": float(contribution[neuron]),
            "activation": float(pooled[neuron]), "weight": float(weights[target, neuron]),
            "concepts": list(zip(record.concepts, record.scores, strict=True)) if record else [],
            "uncertain": bool(record.uncertain) if record else True,
            "map": spatial / peak if peak > 0 else spatial,
        })
    return out
