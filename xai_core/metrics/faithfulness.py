"""Faithfulness: deletion / insertion curves and faithfulness correlation (one batched model call per image).

Removed pixels are in-filled by a `remover` (`xai_core.removal.numpy_remover`: ROAD's noisy linear imputation by
default, blur or mean as named options), which keeps the image in the model's distribution; a fixed `baseline`
image (the legacy constant fill) is still accepted where no remover is given."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]  # images [N, H, W] (in the space `image` is given in) -> target scores [N]
Remover = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images [N, H, W], removed [N, H, W] bool) -> images


def _order(relevance: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(relevance, np.float64).ravel(), kind="stable")


def _fill(image: np.ndarray, removed: np.ndarray, remover: Remover | None, baseline: np.ndarray | None
          ) -> np.ndarray:
    """Images [N, H, W]: `image` with each removed[i] in-filled by the remover, or replaced by the baseline."""
    if remover is not None:
        return remover(np.broadcast_to(image, removed.shape), removed)
    if baseline is None:
        raise ValueError("give a remover (xai_core.removal.numpy_remover) or a baseline image")
    return np.where(removed, baseline[None], image[None])


def deletion_insertion(image: np.ndarray, relevance: np.ndarray, score: Scorer, baseline: np.ndarray | None = None,
                       steps: int = 20, *, remover: Remover | None = None) -> dict[str, float]:
    """Areas under the curves of the target score while pixels are removed (deletion) or added to the fully
    removed image (insertion) in decreasing relevance; x in [0, 1] (fraction of pixels), trapezoid rule. Removed
    pixels are in-filled by `remover` from the pixels still present, else replaced by `baseline`."""
    order = _order(relevance)
    counts = np.linspace(0, image.size, steps + 1).round().astype(int)
    top = np.zeros((len(counts), image.size), bool)
    for row, k in enumerate(counts):
        top[row, order[:k]] = True
    top = top.reshape(len(counts), *image.shape)
    deleted = _fill(image, top, remover, baseline)
    inserted = _fill(image, ~top, remover, baseline)
    scores = score(np.concatenate([deleted, inserted]))
    x = counts / image.size
    return {"deletion_auc": float(np.trapezoid(scores[:len(counts)], x)),
            "insertion_auc": float(np.trapezoid(scores[len(counts):], x))}


def faithfulness_correlation(image: np.ndarray, relevance: np.ndarray, score: Scorer,
                             baseline: np.ndarray | None = None, subsets: int = 32, subset_fraction: float = 0.05,
                             seed: int = 0, *, remover: Remover | None = None) -> float:
    """Pearson correlation over random pixel subsets between the subset's relevance sum and the drop of the target
    score when the subset is removed (in-filled by `remover`, else replaced by `baseline`)."""
    rng = np.random.default_rng(seed)
    rel = np.asarray(relevance, np.float64).ravel()
    k = max(1, int(subset_fraction * image.size))
    removed = np.zeros((subsets, image.size), bool)
    for row in range(subsets):
        removed[row, rng.choice(image.size, k, replace=False)] = True
    sums = (removed * rel).sum(1)
    removed = removed.reshape(subsets, *image.shape)
    scores = score(np.concatenate([image[None], _fill(image, removed, remover, baseline)]))
    drops = scores[0] - scores[1:]
    if np.std(drops) == 0 or np.std(sums) == 0:
        return float("nan")
    return float(np.corrcoef(sums, drops)[0, 1])
