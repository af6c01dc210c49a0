"""Faithfulness: deletion / insertion curves and faithfulness correlation (one batched model call per image)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]  # images [N, H, W] (in the space `image` is given in) -> target scores [N]


def _order(relevance: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(relevance, np.float64).ravel(), kind="stable")


def deletion_insertion(image: np.ndarray, relevance: np.ndarray, score: Scorer, baseline: np.ndarray,
                       steps: int = 20) -> dict[str, float]:
    """Areas under the curves of the target score while pixels are removed (deletion: replaced by `baseline`) or
    added to the baseline (insertion) in decreasing relevance; x in [0, 1] (fraction of pixels), trapezoid rule."""
    flat, base = image.ravel(), baseline.ravel()
    order = _order(relevance)
    counts = np.linspace(0, flat.size, steps + 1).round().astype(int)
    deleted, inserted = [], []
    for k in counts:
        d = flat.copy()
        d[order[:k]] = base[order[:k]]
        deleted.append(d.reshape(image.shape))
        i = base.copy()
        i[order[:k]] = flat[order[:k]]
        inserted.append(i.reshape(image.shape))
    scores = score(np.stack(deleted + inserted))
    x = counts / flat.size
    return {"deletion_auc": float(np.trapezoid(scores[:len(counts)], x)),
            "insertion_auc": float(np.trapezoid(scores[len(counts):], x))}


def faithfulness_correlation(image: np.ndarray, relevance: np.ndarray, score: Scorer, baseline: np.ndarray,
                             subsets: int = 32, subset_fraction: float = 0.05, seed: int = 0) -> float:
    """Pearson correlation over random pixel subsets between the subset's relevance sum and the drop of the target
    score when the subset is replaced by the baseline."""
    rng = np.random.default_rng(seed)
    flat, base, rel = image.ravel(), baseline.ravel(), np.asarray(relevance, np.float64).ravel()
    k = max(1, int(subset_fraction * flat.size))
    images, sums = [image], []
    for _ in range(subsets):
        idx = rng.choice(flat.size, k, replace=False)
        perturbed = flat.copy()
        perturbed[idx] = base[idx]
        images.append(perturbed.reshape(image.shape))
        sums.append(rel[idx].sum())
    scores = score(np.stack(images))
    drops = scores[0] - scores[1:]
    if np.std(drops) == 0 or np.std(sums) == 0:
        return float("nan")
    return float(np.corrcoef(sums, drops)[0, 1])
