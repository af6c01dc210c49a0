"""Aggregates with bootstrap 95% intervals: every interval in the project comes from `bootstrap_interval`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def bootstrap_interval(data: Sequence[np.ndarray], statistic: Callable[..., np.ndarray | float], *,
                       n_boot: int = 2000, seed: int = 0, level: float = 0.95, paired: bool = False,
                       vectorized: bool = False, batch: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the samples in `data` by `scipy.stats.bootstrap` (seeded,
    so reproducible). Resamples on which the statistic is undefined (NaN, e.g. an AUROC of a resample holding one
    class only) are left out of the interval; (NaN, NaN) when none is defined. Samples need two observations or
    more (callers handle smaller ones). `paired`: the samples are resampled together, and the statistic gets them
    with their own dtypes (scipy would hand it floats), once per resample."""
    # deferred: scipy.stats is slow to import and most importers of xai_core.metrics (SegX, the pages) never
    # bootstrap

    if paired:  # resample row numbers, so boolean labels stay boolean
        arrays, of_samples = [np.asarray(sample) for sample in data], statistic

        def on_rows(rows: np.ndarray) -> float:
            index = rows.astype(np.intp)
            return of_samples(*(array[index] for array in arrays))

        data, statistic, paired, vectorized = (np.arange(len(arrays[0])),), on_rows, False, False
    with warnings.catch_warnings():
        # a NaN in the bootstrap distribution makes scipy's interval NaN with a warning: it is handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(tuple(data), statistic, n_resamples=n_boot, batch=batch, vectorized=vectorized,
                                 paired=paired, confidence_level=level, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
        return low, high
    defined = np.asarray(result.bootstrap_distribution, np.float64)
    defined = defined[np.isfinite(defined)]
    if not len(defined):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(defined, alpha)), float(np.quantile(defined, 1 - alpha))


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 statistic: Callable[..., np.ndarray] = np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (a NumPy reduction taking `axis`) over the finite values (NaNs
    dropped); a single value is its own interval."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    return bootstrap_interval((v,), statistic, n_boot=n_boot, seed=seed, level=level, vectorized=True)


def summarise(values: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n"} over the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    low, high = bootstrap_ci(v, seed=seed)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci_low": low, "ci_high": high, "n": len(v)}
