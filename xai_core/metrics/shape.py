"""Shape of a map: complexity (entropy) and sparseness (Gini index), per image of [B, H, W]."""

from __future__ import annotations

import numpy as np


def complexity(maps: np.ndarray) -> np.ndarray:
    """Entropy of |a| / sum |a| (natural log): low for maps that concentrate their relevance."""
    a = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    total = a.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / total
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.where(total[:, 0] > 0, -terms.sum(1), np.nan)


def sparseness(maps: np.ndarray) -> np.ndarray:
    """Gini index of |a| in [0, 1]: 0 for a flat map, near 1 for a single hot pixel."""
    a = np.sort(np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1), axis=1)
    n = a.shape[1]
    k = np.arange(1, n + 1)
    total = a.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gini = ((2 * k - n - 1) * a).sum(1) / (n * total)
    return np.where(total > 0, gini, np.nan)
