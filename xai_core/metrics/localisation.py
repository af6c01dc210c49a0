"""Localisation metrics of maps [B, H, W] (non-negative) against ground-truth masks [B, H, W] (bool).

Every function returns one value per image (NaN where it is undefined, e.g. an empty mask or an all-zero map).
"""

from __future__ import annotations

import numpy as np


def _batch(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks).astype(bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    return maps.reshape(len(maps), -1), masks.reshape(len(masks), -1)


def _defined(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Rows where a localisation score means something: some ground truth and some relevance (an all-zero map
    has no maximum and no ranking)."""
    return m.any(1) & (np.abs(a).max(1, initial=0.0) > 0)


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the total relevance that lies inside the ground truth."""
    a, m = _batch(maps, masks)
    total = a.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * m).sum(1) / total
    return np.where((total > 0) & m.any(1), out, np.nan)


def relevance_rank(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the K most relevant pixels inside the ground truth, K = ground-truth area (stable order on ties)."""
    a, m = _batch(maps, masks)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        k = int(m[i].sum())
        if k and a[i].max() > 0:
            top = np.argsort(-a[i], kind="stable")[:k]
            out[i] = m[i, top].mean()
    return out


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 when a maximum of the map falls inside the ground truth (any of tied maxima), else 0."""
    a, m = _batch(maps, masks)
    hits = ((a == a.max(1, keepdims=True)) & m).any(1).astype(float)
    return np.where(_defined(a, m), hits, np.nan)


def top_fraction(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean masks of the top `fraction` pixels of each map [B, N] (exactly round(fraction * N) pixels)."""
    a = np.asarray(maps, np.float64).reshape(len(maps), -1)
    k = max(1, round(fraction * a.shape[1]))
    order = np.argsort(-a, axis=1, kind="stable")[:, :k]
    out = np.zeros(a.shape, bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks per row (NaN when both are empty)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    union = (a | b).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, (a & b).sum(1) / union, np.nan)


def iou_at(maps: np.ndarray, masks: np.ndarray, percent: float = 5.0) -> np.ndarray:
    """IoU between the top-p% pixels of the map and the ground truth."""
    a, m = _batch(maps, masks)
    return np.where(_defined(a, m), iou(top_fraction(a, percent / 100), m), np.nan)


def iou_curve(maps: np.ndarray, masks: np.ndarray, thresholds: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds t [T] in [0, 1] and IoU(a_norm >= t, mask) per image [B, T] (a_norm min-max scaled per image;
    0 where the union is empty)."""
    a, m = _batch(maps, masks)
    lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(hi > lo, (a - lo) / (hi - lo), 0.0)
    ts = np.linspace(0, 1, thresholds)
    return ts, np.nan_to_num(np.stack([iou(norm >= t, m) for t in ts], 1), nan=0.0)


def auitc(maps: np.ndarray, masks: np.ndarray, thresholds: int = 101) -> np.ndarray:
    """Area under IoU(a_norm >= t, mask) over t in [0, 1] (a_norm min-max scaled per image; trapezoid rule)."""
    a, m = _batch(maps, masks)
    ts, curves = iou_curve(maps, masks, thresholds)
    return np.where(_defined(a, m), np.trapezoid(curves, ts, axis=1), np.nan)
