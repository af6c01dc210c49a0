"""Eye-gaze plausibility: a gaze heatmap from fixations and saliency-vs-gaze scores (KL, NSS, CC, SIM).

The heatmap puts a box at each fixation (weighted by its duration) and blurs it with a Gaussian. Its settings are a
`GazeKernel`: the default, `MIMIC_KERNEL`, is the setting of Watson et al. (WACV 2023, "Learning How to MIMIC", on
MIMIC-CXR-EGD), a 20 x 20 px box and sigma 150 px in source-image pixels, scaled to the heatmap grid;
`LEGACY_KERNEL` is this project's earlier setting, a 7 x 7 px box and sigma 6 px on the heatmap grid itself.
"""

from __future__ import annotations

import csv
import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from xai_core.errors import InputError, UnknownNameError

EPS = 1e-7
# The source side assumed where fixations come without a source image (phantom cases are drawn on the grid): the
# square centre crop of a typical MIMIC-CXR film (2544 x 3056 px).
NOMINAL_SOURCE_PX = 2500.0


@dataclass(frozen=True)
class GazeKernel:
    """Gaze heatmap settings: a box of side `box` px at each fixation, a Gaussian blur of `sigma` px, in source-image
    pixels (scaled to the heatmap grid) or, where `on_grid`, in heatmap-grid pixels as given; `weighted`: boxes
    weighted by fixation duration (else one per fixation)."""

    name: str
    box: float
    sigma: float
    on_grid: bool = False
    weighted: bool = True

    def scaled(self, grid_px: int, source_px: float | None = None) -> GridKernel:
        """The box side (whole pixels, at least 1) and sigma on a grid of `grid_px` px spanning `source_px` source
        pixels (None: NOMINAL_SOURCE_PX); grid-based kernels are returned as they are."""
        scale = 1.0 if self.on_grid else grid_px / (source_px or NOMINAL_SOURCE_PX)
        return GridKernel(max(1, math.floor(self.box * scale + 0.5)), self.sigma * scale)


class GridKernel(NamedTuple):
    """A GazeKernel on a heatmap grid: box side and sigma in grid pixels."""

    box: int
    sigma: float


MIMIC_KERNEL = GazeKernel("mimic", box=20.0, sigma=150.0)
LEGACY_KERNEL = GazeKernel("legacy", box=7.0, sigma=6.0, on_grid=True)
GAZE_KERNELS = {kernel.name: kernel for kernel in (MIMIC_KERNEL, LEGACY_KERNEL)}
DEFAULT_GAZE_KERNEL = MIMIC_KERNEL.name


def resolve_gaze_kernel(kernel: GazeKernel | str | float | None = None, sigma: float | None = None) -> GazeKernel:
    """A kernel from a preset name (GAZE_KERNELS) or as given; `sigma` overrides its blur, in the kernel's own
    pixels. The earlier API passed a bare sigma in grid pixels: a number as `kernel`, or `sigma` with no kernel, is
    the legacy kernel with that blur; no kernel and no sigma is the default (mimic)."""
    if isinstance(kernel, numbers.Real) and not isinstance(kernel, bool):
        kernel, sigma = LEGACY_KERNEL, float(kernel) if sigma is None else sigma
    if kernel is None:
        kernel = LEGACY_KERNEL.name if sigma is not None else DEFAULT_GAZE_KERNEL
    if isinstance(kernel, str):
        if kernel not in GAZE_KERNELS:
            raise UnknownNameError(f"unknown gaze kernel '{kernel}'; use one of {', '.join(GAZE_KERNELS)}")
        kernel = GAZE_KERNELS[kernel]
    if sigma is not None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise InputError(f"gaze sigma must be a non-negative number of pixels, not {sigma}")
        kernel = replace(kernel, sigma=float(sigma))
    return kernel


def _number(value: str | None, column: str, line: int, path: Path) -> float:
    """A finite number from a csv cell; InputError naming the file, line and column otherwise."""
    try:
        number = float(value if value is not None else "")
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"{path.name}, line {line}: {column} is {value!r}, not a finite number")
    return number


def read_fixations(path: str | Path, dicom_id: str | None = None) -> np.ndarray:
    """Fixations [N, 3] (x, y in source-image pixels, duration in s) from a REFLACX or MIMIC-EGD `fixations.csv`.

    REFLACX (x_position, y_position): duration = timestamp_end_fixation - timestamp_start_fixation (1 where both
    columns are absent). MIMIC-EGD (DICOM_ID, X_ORIGINAL, Y_ORIGINAL, FPOGD): the file may hold many images, so only
    the rows of `dicom_id` are kept (required where it holds several; a file without DICOM_ID is taken as one
    image's); duration = FPOGD (1 where the column is absent). A file with a header but no rows has no fixations.
    Anything else (no header, unknown layout, non-numeric or NaN values, negative durations, an absent id) is an
    InputError naming the file."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(enumerate(reader, start=2))  # (line in the file, row)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path.name}: not a readable csv file ({error})") from None
    if not columns:
        raise InputError(f"{path.name}: empty file; expected a REFLACX or MIMIC-EGD fixations csv with a header")
    names = set(columns)
    if {"x_position", "y_position"} <= names:  # REFLACX
        x_col, y_col = "x_position", "y_position"
        start, end = "timestamp_start_fixation", "timestamp_end_fixation"
        if (start in names) != (end in names):
            raise InputError(f"{path.name}: has only one of {start}, {end}; a duration needs both")

        def duration(row: dict[str, str], line: int) -> float:
            if start not in names:
                return 1.0
            return _number(row.get(end), end, line, path) - _number(row.get(start), start, line, path)
    elif {"X_ORIGINAL", "Y_ORIGINAL"} <= names:  # MIMIC-EGD
        x_col, y_col = "X_ORIGINAL", "Y_ORIGINAL"
        rows = _rows_of_image(rows, names, dicom_id, path)

        def duration(row: dict[str, str], line: int) -> float:
            return _number(row.get("FPOGD"), "FPOGD", line, path) if "FPOGD" in names else 1.0
    else:
        raise InputError(f"{path.name}: not a REFLACX (x_position, y_position) or MIMIC-EGD (X_ORIGINAL, Y_ORIGINAL) "
                         f"fixations file; columns are {sorted(names)}")
    out = []
    for line, row in rows:
        x, y = (_number(row.get(column), column, line, path) for column in (x_col, y_col))
        seconds = duration(row, line)
        if seconds < 0:
            raise InputError(f"{path.name}, line {line}: negative fixation duration ({seconds:g} s)")
        out.append((x, y, seconds))
    return np.asarray(out, np.float32).reshape(-1, 3)


def _rows_of_image(rows: list[tuple[int, dict[str, str]]], names: set[str], dicom_id: str | None,
                   path: Path) -> list[tuple[int, dict[str, str]]]:
    """The (line, row) pairs of one image of a MIMIC-EGD file."""
    if "DICOM_ID" not in names:
        return rows
    ids = {(row.get("DICOM_ID") or "").strip() for _, row in rows}
    if dicom_id is None:
        if len(ids) > 1:
            raise InputError(f"{path.name} holds the fixations of {len(ids)} images (DICOM_ID); name the image")
        return rows
    kept = [(line, row) for line, row in rows if (row.get("DICOM_ID") or "").strip() == dicom_id]
    if rows and not kept:
        raise InputError(f"{path.name} has no fixations of DICOM_ID '{dicom_id}' (it holds {len(ids)} other "
                         f"image{'s' if len(ids) > 1 else ''}, e.g. '{min(ids)}')")
    return kept


def gaze_heatmap(fixations: np.ndarray, shape: tuple[int, int], sigma: float | None = None, *,
                 kernel: GazeKernel | str | float | None = None, source_px: float | None = None) -> np.ndarray:
    """The gaze heatmap of fixations [N, 3] (x, y, duration on the grid) on a grid of `shape`, normalised to sum 1
    (all zero where no fixation falls on it). `kernel`: a GazeKernel or preset name (default mimic); `sigma`
    overrides its blur (see `resolve_gaze_kernel`: a bare sigma is the legacy call, in grid pixels); `source_px`: the
    source-image pixels the grid's side spans, to scale a source-pixel kernel (None: NOMINAL_SOURCE_PX)."""
    settings = resolve_gaze_kernel(kernel, sigma)
    box, blur = settings.scaled(max(shape), source_px)
    heat = np.zeros(shape, np.float64)
    h, w = shape
    for x, y, duration in np.asarray(fixations, np.float64).reshape(-1, 3):
        if not (0 <= x < w and 0 <= y < h):
            continue
        top, left = int(y) - (box - 1) // 2, int(x) - (box - 1) // 2
        heat[max(0, top):top + box, max(0, left):left + box] += duration if settings.weighted else 1.0
    heat = gaussian_filter(heat, blur)
    total = heat.sum()
    return heat / total if total > 0 else heat


def reader_path(points: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Boolean mask of the pixels within `radius` px of a fixation (`points` [N, 2+], x and y on the grid first):
    the part of the film the reader came near. All False where no fixation falls on the grid."""
    h, w = shape
    seeds = np.ones(shape, bool)
    for x, y in np.atleast_2d(np.asarray(points, np.float64))[:, :2]:
        if 0 <= x < w and 0 <= y < h:
            seeds[int(y), int(x)] = False
    if seeds.all():
        return np.zeros(shape, bool)
    return distance_transform_edt(seeds) <= radius


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
