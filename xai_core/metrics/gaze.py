"""Eye-gaze plausibility: a gaze heatmap from fixations and saliency-vs-gaze scores (KL, NSS, CC, SIM)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from xai_core.errors import InputError

EPS = 1e-7


def read_fixations(path: str | Path) -> np.ndarray:
    """Fixations [N, 3] (x, y, duration in s; 1 where unknown) from a REFLACX or MIMIC-EGD `fixations.csv`."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return np.zeros((0, 3), np.float32)
    columns = set(rows[0])
    if {"x_position", "y_position"} <= columns:  # REFLACX
        out = [(float(r["x_position"]), float(r["y_position"]),
                float(r["timestamp_end_fixation"]) - float(r["timestamp_start_fixation"])
                if r.get("timestamp_end_fixation") and r.get("timestamp_start_fixation") else 1.0) for r in rows]
    elif {"X_ORIGINAL", "Y_ORIGINAL"} <= columns:  # MIMIC-EGD (eye-gaze dataset): one row per gaze sample
        out = [(float(r["X_ORIGINAL"]), float(r["Y_ORIGINAL"]), 1.0) for r in rows]
    else:
        raise InputError(f"{path}: not a REFLACX (x_position, y_position) or MIMIC-EGD (X_ORIGINAL, Y_ORIGINAL) "
                         f"fixations file; columns are {sorted(columns)}")
    return np.asarray(out, np.float32)


def gaze_heatmap(fixations: np.ndarray, shape: tuple[int, int], sigma: float, box: int = 3,
                 weighted: bool = True) -> np.ndarray:
    """A small box at each fixation (duration-weighted), Gaussian blur of `sigma` px, normalised to sum 1."""
    heat = np.zeros(shape, np.float64)
    h, w = shape
    for x, y, duration in np.asarray(fixations, np.float64).reshape(-1, 3):
        if not (0 <= x < w and 0 <= y < h):
            continue
        xi, yi = int(x), int(y)
        heat[max(0, yi - box):yi + box + 1, max(0, xi - box):xi + box + 1] += duration if weighted else 1.0
    heat = gaussian_filter(heat, sigma)
    total = heat.sum()
    return heat / total if total > 0 else heat


def _has_mass(a: np.ndarray) -> bool:
    """Whether a map has any positive value to normalise (no fixation on the image gives an empty heatmap)."""
    return bool(np.clip(np.asarray(a, np.float64), 0, None).sum() > 0)


def _prob(a: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(a, np.float64), 0, None)
    return a / max(a.sum(), EPS)


def kl_divergence(gaze: np.ndarray, saliency: np.ndarray) -> float:
    """KL(G || S) with both normalised to sum 1 (epsilon 1e-7): lower is closer; NaN when either map is empty."""
    if not (_has_mass(gaze) and _has_mass(saliency)):
        return float("nan")
    g, s = _prob(gaze), _prob(saliency)
    return float((g * np.log(EPS + g / (s + EPS))).sum())


def nss(saliency: np.ndarray, fixations: np.ndarray) -> float:
    """Normalised scanpath saliency: mean z-scored saliency at the fixation points."""
    s = np.asarray(saliency, np.float64)
    z = (s - s.mean()) / max(s.std(), EPS)
    h, w = s.shape
    points = [(int(y), int(x)) for x, y, *_ in np.asarray(fixations).reshape(len(fixations), -1)
              if 0 <= x < w and 0 <= y < h]
    return float(np.mean([z[p] for p in points])) if points else float("nan")


def cc(gaze: np.ndarray, saliency: np.ndarray) -> float:
    """Pearson correlation of the two maps."""
    a, b = np.asarray(gaze, np.float64).ravel(), np.asarray(saliency, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def sim(gaze: np.ndarray, saliency: np.ndarray) -> float:
    """Histogram intersection of the two maps normalised to sum 1 (1 = identical); NaN when either map is empty."""
    if not (_has_mass(gaze) and _has_mass(saliency)):
        return float("nan")
    return float(np.minimum(_prob(gaze), _prob(saliency)).sum())
