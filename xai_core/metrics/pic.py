"""Performance information curves (Kapishnikov et al. 2021): SIC (softmax/sigmoid score) and AIC (still predicted).

Same definitions as `saliency.metrics.pic`; faster in three ways: the skip rules are checked before any bokeh image
is built, all bokeh images of one map go through the model in one batch, and the linear interpolation triangulates
only the kept pixels that touch a removed pixel (plus the corners). Interior kept pixels rarely bound a triangle that
covers a removed pixel, and dropping them shrinks the triangulation from up to 75% of the image to the borders of
its regions: 0.07 s instead of 3-13 s per bokeh image for a blob-shaped map at 224 px. Scattered maps (random) have
no interior; for them the pixels of each triangle are walked directly (rasterize_linear), which beats scipy's
point location by 5x. Agreement: tests/test_metrics.py; speed: benchmarks/pic.py.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
CURVE_POINTS = 1000


class PicSkip(Exception):
    """The image is skipped (original score too low, or the blurred image already scores as high)."""


@dataclass
class PicResult:
    auc: float
    curve_x: np.ndarray
    curve_y: np.ndarray
    scores: np.ndarray  # model scores of [blurred, bokeh per threshold..., original]


def random_mask(shape: tuple[int, int], fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """A fixed random set of `fraction` of the pixels (the same for every method of an image)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[rng.choice(mask.size, int(mask.size * fraction), replace=False)] = True
    return mask.reshape(shape)


def webp_size(image: np.ndarray) -> int:
    """Bytes of the lossless WebP encoding: the information proxy."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="webp", lossless=True, quality=100)
    return buffer.tell()


@functools.cache
def _encoder_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0))), thread_name_prefix="webp")


def bokeh(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The image rebuilt from the kept pixels (and the 4 corners) by linear interpolation over a Delaunay
    triangulation of the kept pixels that border removed ones; removed pixels outside the hull take the mean."""
    from scipy.interpolate import LinearNDInterpolator
    from scipy.ndimage import binary_erosion
    from scipy.spatial import Delaunay

    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return image.copy()
    border = keep & ~binary_erosion(keep, structure=np.ones((3, 3), bool), border_value=1)
    border[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    points = np.argwhere(border).astype(np.float64)
    values = image[border].astype(np.float64)
    fill = float(image.mean())
    # Pixel grids are full of co-circular points, which qhull resolves by merging facets; a fixed 0.001-pixel
    # jitter breaks those ties (as arbitrarily as qhull does) and makes the triangulation of a scattered map 2.4x
    # faster. Interpolated values move by well under a grey level on average.
    points += np.random.default_rng(0).uniform(-1e-3, 1e-3, points.shape)
    triangulation = Delaunay(points)
    if len(triangulation.simplices) > RASTERIZE_ABOVE:
        filled = rasterize_linear(points, triangulation.simplices, values, ~keep, fill)
    else:
        filled = np.full(keep.shape, fill)
        unknown = np.argwhere(~keep)
        filled[tuple(unknown.T)] = LinearNDInterpolator(triangulation, values, fill_value=fill)(unknown)
    out = np.where(keep, image, filled)
    if np.issubdtype(image.dtype, np.integer):
        out = np.round(out)
    return out.astype(image.dtype)


# Above this many triangles, walking the pixels of each triangle beats scipy's point location, whose per-triangle
# barycentric set-up dominates: 0.05 s instead of 0.25 s for the 50,000 triangles of a scattered map at half the
# pixels (224 px). Below it (blob-shaped maps), scipy is faster. Same values to 1e-12: tests/test_metrics.py.
RASTERIZE_ABOVE = 4096


def rasterize_linear(points: np.ndarray, simplices: np.ndarray, values: np.ndarray, wanted: np.ndarray,
                     fill: float) -> np.ndarray:
    """Linear interpolation of `values` (at `points`, row/column coordinates) over the triangles `simplices`, at
    the integer pixels where `wanted` is true; `fill` elsewhere and outside every triangle."""
    out = np.full(wanted.shape, fill, np.float64)
    p0, p1, p2 = (points[simplices[:, k]] for k in range(3))
    e1, e2 = p1 - p0, p2 - p0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    corners = np.stack([p0, p1, p2], 1)
    lo = np.maximum(np.ceil(corners.min(1) - 1e-9).astype(np.int64), 0)
    hi = np.minimum(np.floor(corners.max(1) + 1e-9).astype(np.int64), np.array(wanted.shape) - 1)
    rows, cols = np.clip(hi - lo + 1, 0, None).T
    count = rows * cols * (np.abs(det) > 1e-12)
    triangle = np.repeat(np.arange(len(simplices)), count)
    offset = np.arange(len(triangle)) - np.repeat(np.cumsum(count) - count, count)
    r = lo[triangle, 0] + offset // cols[triangle]
    c = lo[triangle, 1] + offset % cols[triangle]
    take = wanted[r, c]
    triangle, r, c = triangle[take], r[take], c[take]
    dr, dc = r - p0[triangle, 0], c - p0[triangle, 1]
    inv_det = 1.0 / det[triangle]
    l1 = (dr * e2[triangle, 1] - dc * e2[triangle, 0]) * inv_det
    l2 = (e1[triangle, 0] * dc - e1[triangle, 1] * dr) * inv_det
    inside = (l1 >= -1e-9) & (l2 >= -1e-9) & (l1 + l2 <= 1 + 1e-9)
    triangle, r, c, l1, l2 = triangle[inside], r[inside], c[inside], l1[inside], l2[inside]
    v = values[simplices[triangle]]
    out[r, c] = v[:, 0] + l1 * (v[:, 1] - v[:, 0]) + l2 * (v[:, 2] - v[:, 0])
    return out


def pic_curve(image: np.ndarray, relevance: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
              mask: np.ndarray, *, thresholds: tuple[float, ...] = THRESHOLDS, min_score: float = 0.5,
              monotone: bool = True) -> PicResult:
    """One image's information curve: `predict` maps uint8 images [N, H, W] to scores [N] (SIC: the target's
    probability; AIC: 1.0 if the finding is still predicted, else 0.0). Raises PicSkip per the skip rules."""
    result = pic_curves(image, relevance, predict, mask, {"curve": lambda s: s}, thresholds=thresholds,
                        min_score=min_score, monotone=monotone)["curve"]
    if isinstance(result, PicSkip):
        raise result
    return result


def sic_aic(image: np.ndarray, relevance: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
            mask: np.ndarray, decision_threshold: float, **options: Any) -> dict[str, PicResult | PicSkip]:
    """SIC (the probability itself) and AIC (probability >= the model's operating point) of one map from the same
    bokeh images and the same model scores: half the interpolation and model calls of two `pic_curve`s."""
    return pic_curves(image, relevance, predict, mask,
                      {"sic": lambda s: s, "aic": lambda s: (s >= decision_threshold).astype(np.float64)},
                      **options)


def pic_curves(image: np.ndarray, relevance: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
               mask: np.ndarray, curves: dict[str, Callable[[np.ndarray], np.ndarray]], *,
               thresholds: tuple[float, ...] = THRESHOLDS, min_score: float = 0.5, monotone: bool = True,
               cache: dict[bytes, tuple[np.ndarray, int]] | None = None) -> dict[str, PicResult | PicSkip]:
    """Information curves of one map for several read-outs of the same model score (name -> scores -> curve
    scores); each entry is the curve or the PicSkip that excluded it. Bokeh images, their WebP sizes and the model
    calls are shared, and built only when some curve survives the skip rules. `cache` (one dict per image) keeps
    bokeh images and sizes by kept-pixel set across the maps of that image."""
    if image.dtype != np.uint8:
        raise ValueError(f"PIC needs a uint8 image; got {image.dtype}")
    cache = {} if cache is None else cache

    def bokehs_and_sizes(keeps: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        keys = [np.packbits(keep).tobytes() for keep in keeps]
        pending = {}
        for key, keep in zip(keys, keeps, strict=True):
            if key not in cache and key not in pending:
                rebuilt = bokeh(image, keep)
                # the encoder releases the GIL: it runs while the next bokeh image is interpolated
                pending[key] = (rebuilt, _encoder_pool().submit(webp_size, rebuilt))
        cache.update({key: (rebuilt, size.result()) for key, (rebuilt, size) in pending.items()})
        return [cache[key] for key in keys]

    def bokeh_and_size(keep: np.ndarray) -> tuple[np.ndarray, int]:
        return bokehs_and_sizes([keep])[0]

    blurred, info_blurred = bokeh_and_size(mask)
    raw_ends = np.asarray(predict(np.stack([blurred, image])), np.float64)
    results: dict[str, PicResult | PicSkip] = {}
    ends: dict[str, np.ndarray] = {}
    for name, read_out in curves.items():
        fully_blurred, original = read_out(raw_ends)
        if original < min_score:
            results[name] = PicSkip(f"original score {original:.3f} < {min_score}")
        elif fully_blurred >= original:
            results[name] = PicSkip(f"blurred score {fully_blurred:.3f} >= original {original:.3f}")
        else:
            ends[name] = np.array([fully_blurred, original])
    if not ends:
        return results
    info_original = bokeh_and_size(np.ones_like(mask))[1]
    if info_blurred >= info_original:
        skip = PicSkip("the blurred image holds as much information as the original")
        return {**results, **dict.fromkeys(ends, skip)}
    rebuilt = bokehs_and_sizes([(relevance >= np.quantile(relevance, 1 - t)) | mask for t in thresholds])
    raw = np.asarray(predict(np.stack([b for b, _ in rebuilt])), np.float64)
    info = np.clip((np.array([size for _, size in rebuilt]) - info_blurred) / (info_original - info_blurred),
                   0.0, 1.0)
    for name, (fully_blurred, original) in ends.items():
        scores = curves[name](raw)
        results[name] = _curve(info, scores, fully_blurred, original, monotone)
    return {name: results[name] for name in curves}


def _curve(info: np.ndarray, scores: np.ndarray, fully_blurred: float, original: float,
           monotone: bool) -> PicResult:
    from scipy.interpolate import interp1d

    y = np.clip((scores - fully_blurred) / (original - fully_blurred), 0.0, 1.0)
    if monotone:
        y = np.maximum.accumulate(y)
    xs, ys = np.concatenate([[0.0, 1.0], info]), np.concatenate([[0.0, 1.0], y])
    curve_x = np.append(np.linspace(0.0, 1.0, CURVE_POINTS, endpoint=False), 1.0)
    curve_y = interp1d(xs, ys)(curve_x)
    curve_y[-1] = 1.0
    return PicResult(float(np.trapezoid(curve_y, curve_x)), curve_x, curve_y,
                     np.concatenate([[fully_blurred], scores, [original]]))
