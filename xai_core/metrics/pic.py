"""Performance information curves (Kapishnikov et al. 2021): SIC (softmax/sigmoid score) and AIC (still predicted).

Same definitions as `saliency.metrics.pic`; faster in three ways: the skip rules are checked before any bokeh image
is built, all bokeh images of one map go through the model in one batch, and the linear interpolation triangulates
only the kept pixels that touch a removed pixel (plus the corners). Interior kept pixels rarely bound a triangle that
covers a removed pixel, and dropping them shrinks the triangulation from up to 75% of the image to the borders of
its regions: 0.07 s instead of 3-13 s per bokeh image for a blob-shaped map at 224 px. Scattered maps (random) have
no interior and cost what the reference costs. Agreement: tests/test_metrics.py; speed: benchmarks/pic.py.
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

    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return image.copy()
    border = keep & ~binary_erosion(keep, structure=np.ones((3, 3), bool), border_value=1)
    border[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    points = np.argwhere(border)
    unknown = np.argwhere(~keep)
    values = image[tuple(points.T)].astype(np.float64)
    # Pixel grids are full of co-circular points, which qhull resolves by merging facets; a fixed 0.001-pixel
    # jitter breaks those ties (as arbitrarily as qhull does) and makes the triangulation of a scattered map 2.4x
    # faster. Interpolated values move by well under a grey level on average.
    jitter = np.random.default_rng(0).uniform(-1e-3, 1e-3, points.shape)
    interpolator = LinearNDInterpolator(points + jitter, values, fill_value=float(image.mean()))
    out = image.astype(np.float64) * keep
    out[tuple(unknown.T)] = interpolator(unknown)
    if np.issubdtype(image.dtype, np.integer):
        out = np.round(out)
    return out.astype(image.dtype)


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
