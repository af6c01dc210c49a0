"""Performance information curves (Kapishnikov et al. 2021): SIC (softmax/sigmoid score) and AIC (still predicted).

Same definitions as `saliency.metrics.pic`; faster in four ways: the skip rules are checked before any bokeh image
is built, all bokeh images of one map go through the model in one batch, the linear interpolation triangulates only
the kept pixels that touch a removed pixel (plus the corners), and the bokeh images of one map are built on several
threads (triangulation, interpolation and WebP encoding release the GIL; `set_threads`). Interior kept pixels rarely
bound a triangle that covers a removed pixel, and dropping them shrinks the triangulation from up to 75% of the image
to the borders of its regions. Scattered maps (random) have no interior; for them OpenCV triangulates (faster than
qhull on many points) and the pixels of each triangle are walked directly (rasterize_linear), which beats scipy's
point location. Agreement: tests/test_metrics.py, benchmarks/pic_agreement.py; speed: benchmarks/pic.py; figures
in docs/benchmarks.md.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from scipy.interpolate import LinearNDInterpolator, interp1d
from scipy.ndimage import binary_erosion
from scipy.spatial import Delaunay

THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
CURVE_POINTS = 1000


# The skip rules, by the name a PicSkip carries in `rule` (evaluation counts them per finding: "pic_coverage").
SKIP_RULES = {
    "low_score": "the original score is under the minimum (0.5); for AIC: the finding is not predicted at the "
                 "model's operating point",
    "blurred_as_high": "the fully blurred image already scores as high as the original",
    "no_information": "the blurred image holds as much information (WebP size) as the original",
}


class PicSkip(Exception):
    """The image is skipped by a skip rule (`rule`, a key of SKIP_RULES); the message gives the numbers."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return self.__class__, (str(self), self.rule)


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


# In lossless WebP, `quality` is the compression effort, not fidelity. The reference encodes at 100, and so do we:
# a lower effort is faster but moves the sizes, and with them the AUCs, away from the reference's by more than the
# time it saves is worth (measured per method, both efforts: benchmarks/pic_agreement.py, docs/benchmarks.md).
WEBP_EFFORT = 100


def webp_size(image: np.ndarray, effort: int | None = None) -> int:
    """Bytes of the lossless WebP encoding (at `effort`, default WEBP_EFFORT): the information proxy."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="webp", lossless=True,
                                quality=WEBP_EFFORT if effort is None else effort)
    return buffer.tell()


_THREADS = max(1, len(os.sched_getaffinity(0)))
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def set_threads(threads: int) -> None:
    """Threads that build one map's bokeh images (default: the cores this process may use; 1: no pool)."""
    global _THREADS, _POOL
    with _POOL_LOCK:
        _THREADS = max(1, int(threads))
        if _POOL is not None:
            _POOL.shutdown(wait=False)  # jobs already running finish; its idle threads exit
            _POOL = None


def threads() -> int:
    """Threads that build one map's bokeh images."""
    return _THREADS


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="bokeh")
        return _POOL


def _bokeh_and_size(image: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    rebuilt = bokeh(image, keep)
    return rebuilt, webp_size(rebuilt)


def bokeh(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The image rebuilt from the kept pixels (and the 4 corners) by linear interpolation over a Delaunay
    triangulation of the kept pixels that border removed ones; removed pixels outside the hull take the mean."""
    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return image.copy()
    border = keep & ~binary_erosion(keep, structure=np.ones((3, 3), bool), border_value=1)
    border[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    pixels = np.argwhere(border)
    values = image[border].astype(np.float64)
    fill = float(image.mean())
    simplices = _grid_delaunay(pixels, (h, w)) if len(pixels) > GRID_DELAUNAY_ABOVE else None
    if simplices is not None:
        filled = rasterize_linear(pixels.astype(np.float64), simplices, values, ~keep, fill)
    else:
        triangulation = _jittered_delaunay(pixels, (h, w))
        if len(triangulation.simplices) > RASTERIZE_ABOVE:
            filled = rasterize_linear(triangulation.points, triangulation.simplices, values, ~keep, fill)
        else:
            filled = np.full(keep.shape, fill)
            unknown = np.argwhere(~keep)
            filled[tuple(unknown.T)] = LinearNDInterpolator(triangulation, values, fill_value=fill)(unknown)
    out = np.where(keep, image, filled)
    if np.issubdtype(image.dtype, np.integer):
        out = np.round(out)
    return out.astype(image.dtype)


def _jittered_delaunay(pixels: np.ndarray, shape: tuple[int, int]):
    """scipy's (qhull's) Delaunay triangulation of integer pixel positions.

    Pixel grids are full of co-circular points, which qhull resolves by merging facets; a fixed 0.001-pixel jitter
    breaks those ties (as arbitrarily as qhull does) and makes the triangulation of a scattered map faster.
    Pixels on the image edge move only along it, so the hull stays the image rectangle and removed edge pixels are
    still interpolated (not filled with the mean)."""
    jitter = np.random.default_rng(0).uniform(-1e-3, 1e-3, pixels.shape)
    for axis, size in enumerate(shape):
        jitter[(pixels[:, axis] == 0) | (pixels[:, axis] == size - 1), axis] = 0.0
    return Delaunay(pixels + jitter)


# Above this many points (scattered maps at the denser thresholds), OpenCV's incremental Delaunay (Subdiv2D) is used:
# several times faster than qhull on tens of thousands of pixel positions (docs/benchmarks.md) and, needing no
# jitter, as close to the reference's interpolation (benchmarks/pic.py). Below it, its fixed set-up cost makes no
# difference.
GRID_DELAUNAY_ABOVE = 2048


def _grid_delaunay(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Delaunay triangles (indices into `pixels`, row/column positions that include the 4 image corners) by
    OpenCV, or None when its triangles do not tile the image rectangle exactly; the caller then uses qhull."""
    h, w = shape
    # Subdiv2D starts from a triangle of virtual vertices a few rect sizes out; with a tight rect they fall inside
    # the circumcircles of the long, flat triangles along a sparse image edge, and those triangles go missing
    margin = 8
    subdivision = cv2.Subdiv2D((-margin * w, -margin * h, (2 * margin + 1) * w, (2 * margin + 1) * h))
    subdivision.insert(pixels[:, ::-1].astype(np.float32))
    corners = subdivision.getTriangleList().reshape(-1, 3, 2).round().astype(np.int64)
    if len(corners) == 0 or (corners < 0).any() or (corners[..., 0] >= w).any() or (corners[..., 1] >= h).any():
        return None
    index = np.full(shape, -1, np.int64)
    index[pixels[:, 0], pixels[:, 1]] = np.arange(len(pixels))
    simplices = index[corners[..., 1], corners[..., 0]]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    doubled_area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    if (simplices < 0).any() or doubled_area != 2 * (h - 1) * (w - 1):
        return None
    return simplices


# Above this many triangles, walking the pixels of each triangle beats scipy's point location, whose per-triangle
# barycentric set-up dominates for the many small triangles of a scattered map (docs/benchmarks.md). Below it
# (blob-shaped maps), scipy is faster. Same values to 1e-12: tests/test_metrics.py.
RASTERIZE_ABOVE = 4096


def rasterize_linear(points: np.ndarray, simplices: np.ndarray, values: np.ndarray, wanted: np.ndarray,
                     fill: float) -> np.ndarray:
    """Linear interpolation of `values` (at `points`, row/column coordinates) over the triangles `simplices`, at
    the integer pixels where `wanted` is true; `fill` elsewhere and outside every triangle."""
    out = np.full(wanted.shape, fill, np.float64)
    (r0, r1, r2), (c0, c1, c2) = ([points[simplices[:, k], axis] for k in range(3)] for axis in (0, 1))
    dr1, dc1, dr2, dc2 = r1 - r0, c1 - c0, r2 - r0, c2 - c0
    det = dr1 * dc2 - dc1 * dr2
    # a triangle with pixel corners and area 1/2 holds no pixel besides its corners (Pick's theorem): most of the
    # triangles of a scattered map; any other triangle counts if it is not degenerate
    min_det = 1.5 if np.array_equal(points, np.round(points)) else 1e-12
    kept = np.flatnonzero(np.abs(det) > min_det)
    simplices, r0, r1, r2, c0, c1, c2, dr1, dc1, dr2, dc2, det = (
        a[kept] for a in (simplices, r0, r1, r2, c0, c1, c2, dr1, dc1, dr2, dc2, det))
    row_lo = np.maximum(np.ceil(np.minimum(np.minimum(r0, r1), r2) - 1e-9).astype(np.int64), 0)
    col_lo = np.maximum(np.ceil(np.minimum(np.minimum(c0, c1), c2) - 1e-9).astype(np.int64), 0)
    row_hi = np.minimum(np.floor(np.maximum(np.maximum(r0, r1), r2) + 1e-9).astype(np.int64), wanted.shape[0] - 1)
    col_hi = np.minimum(np.floor(np.maximum(np.maximum(c0, c1), c2) + 1e-9).astype(np.int64), wanted.shape[1] - 1)
    rows, cols = np.clip(row_hi - row_lo + 1, 0, None), np.clip(col_hi - col_lo + 1, 0, None)
    count = rows * cols
    triangle = np.repeat(np.arange(len(simplices)), count)
    offset = np.arange(len(triangle)) - np.repeat(np.cumsum(count) - count, count)
    box_cols = cols[triangle]
    r = row_lo[triangle] + offset // box_cols
    c = col_lo[triangle] + offset % box_cols
    take = np.flatnonzero(wanted[r, c])
    triangle, r, c = triangle[take], r[take], c[take]
    dr, dc = r - r0[triangle], c - c0[triangle]
    inv_det = 1.0 / det[triangle]
    l1 = (dr * dc2[triangle] - dc * dr2[triangle]) * inv_det
    l2 = (dr1[triangle] * dc - dc1[triangle] * dr) * inv_det
    inside = np.flatnonzero((l1 >= -1e-9) & (l2 >= -1e-9) & (l1 + l2 <= 1 + 1e-9))
    triangle, r, c, l1, l2 = triangle[inside], r[inside], c[inside], l1[inside], l2[inside]
    v0, v1, v2 = (values[simplices[triangle, k]] for k in range(3))
    out[r, c] = v0 + l1 * (v1 - v0) + l2 * (v2 - v0)
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
        pending = {key: keep for key, keep in zip(keys, keeps, strict=True) if key not in cache}
        if _THREADS == 1:
            cache.update({key: _bokeh_and_size(image, keep) for key, keep in pending.items()})
        else:
            # triangulation, interpolation and encoding release the GIL: the thresholds run side by side
            jobs = {key: _pool().submit(_bokeh_and_size, image, keep) for key, keep in pending.items()}
            cache.update({key: job.result() for key, job in jobs.items()})
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
            results[name] = PicSkip(f"original score {original:.3f} < {min_score}", "low_score")
        elif fully_blurred >= original:
            results[name] = PicSkip(f"blurred score {fully_blurred:.3f} >= original {original:.3f}",
                                    "blurred_as_high")
        else:
            ends[name] = np.array([fully_blurred, original])
    if not ends:
        return results
    info_original = bokeh_and_size(np.ones_like(mask))[1]
    if info_blurred >= info_original:
        skip = PicSkip("the blurred image holds as much information as the original", "no_information")
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
    y = np.clip((scores - fully_blurred) / (original - fully_blurred), 0.0, 1.0)
    if monotone:
        y = np.maximum.accumulate(y)
    xs, ys = np.concatenate([[0.0, 1.0], info]), np.concatenate([[0.0, 1.0], y])
    curve_x = np.append(np.linspace(0.0, 1.0, CURVE_POINTS, endpoint=False), 1.0)
    curve_y = interp1d(xs, ys)(curve_x)
    curve_y[-1] = 1.0
    return PicResult(float(np.trapezoid(curve_y, curve_x)), curve_x, curve_y,
                     np.concatenate([[fully_blurred], scores, [original]]))
