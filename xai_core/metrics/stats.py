"""Aggregates with bootstrap 95% intervals."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 statistic=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the finite values (NaNs dropped)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    samples = statistic(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def summarise(values: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n"} over the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    low, high = bootstrap_ci(v, seed=seed)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci_low": low, "ci_high": high, "n": len(v)}
