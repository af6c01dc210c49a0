"""Adaptive representative images per neuron."""

from __future__ import annotations

import numpy as np

DEFAULT_PERCENTILE = 93.0
DEFAULT_CAP = 50


def representatives(activations: np.ndarray, percentile: float = DEFAULT_PERCENTILE,
                    cap: int = DEFAULT_CAP) -> list[np.ndarray]:
    """Per neuron (column of `activations` [N images, K neurons]), the indices of the images whose activation is
    above T = max - (1 - p/100) * (max - min), most active first, at most `cap` of them.

    A neuron that never varies has no representatives (nothing to explain)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    acts = np.asarray(activations, np.float64)
    if acts.ndim != 2:
        raise ValueError(f"activations must be [images, neurons], got shape {acts.shape}")
    top, bottom = acts.max(0), acts.min(0)
    threshold = top - (1 - percentile / 100) * (top - bottom)
    chosen = []
    for k in range(acts.shape[1]):
        column = acts[:, k]
        above = np.flatnonzero(column > threshold[k]) if top[k] > bottom[k] else np.array([], np.int64)
        order = above[np.argsort(-column[above], kind="stable")]
        chosen.append(order[:cap])
    return chosen


def band_percent(percentile: float) -> float:
    """How close to its strongest response (percent of its activation range) a neuron's representatives are: the
    rule's T keeps the top 100 - p percent of the range between its weakest and strongest activation."""
    return round(100.0 - float(percentile), 6)
