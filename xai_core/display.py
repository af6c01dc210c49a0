"""Display maths for the dashboard: how a relevance map is scaled for a tile (with the values its colour bar shows),
when a map is too empty to draw, the contour of its top region, and window presets for the viewer.

Everything here is for display only: nothing changes what the model receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from xai_core.errors import ParameterError
from xai_core.overlay import COLOUR_MAPS, top_region, with_note

SCALE_MODES = ("absolute", "per map")
# Pixel-level attributions (speckle at full resolution): smoothed before their top region is outlined.
SPECKLED_METHODS = frozenset({"ig", "random"})
EMPTY_RELATIVE = 1e-6  # a map whose range is below this share of its largest value is flat
EMPTY_ABSOLUTE = 0.05  # a unit-range map (NEMt, random) whose maximum is below this holds no relevance worth drawing
SMOOTH_SIGMA = 0.02  # Gaussian sigma as a share of the map's longer side


@dataclass(frozen=True)
class DisplayMap:
    """A map scaled to [0, 1] for colouring, the values its colour bar spans, and whether it is empty."""

    heat: np.ndarray
    low: float  # map value shown at the bottom of the colour bar
    high: float  # map value shown at the top of the colour bar
    empty: bool
    reason: str  # why the map is empty ('' when it is not)


def empty_reason(relevance: np.ndarray, unit_range: bool = False) -> str:
    """Why a map is too flat or too weak to show as heat, or '' when it is not."""
    relevance = np.asarray(relevance, np.float32)
    if relevance.size == 0 or not np.isfinite(relevance).all():
        return "the map has no finite values"
    lo, hi = float(relevance.min()), float(relevance.max())
    if hi <= 0:
        return "the map is zero everywhere"
    if hi - lo <= EMPTY_RELATIVE * max(abs(hi), 1e-12):
        return f"the map is flat (every value is {hi:.3g})"
    if unit_range and hi < EMPTY_ABSOLUTE:
        return f"its largest value is {hi:.3g} on a 0-1 scale"
    return ""


def scale_map(relevance: np.ndarray, mode: str = "absolute", unit_range: bool = False) -> DisplayMap:
    """Scales a map for display. 'absolute': 0-1 for maps that are absolute values in [0, 1] (unit_range), else 0
    to the map's maximum, so 0 stays 0 and weak maps of absolute methods look weak. 'per map': from the map's
    minimum to its maximum. An empty map (see `empty_reason`) is returned all zeros."""
    if mode not in SCALE_MODES:
        raise ParameterError(f"unknown scale mode '{mode}'; use one of {', '.join(SCALE_MODES)}")
    relevance = np.asarray(relevance, np.float32)
    reason = empty_reason(relevance, unit_range)
    finite = relevance if np.isfinite(relevance).all() else np.nan_to_num(relevance)
    if mode == "absolute":
        low, high = (0.0, 1.0) if unit_range else (0.0, float(max(finite.max(), 0.0)) if finite.size else 0.0)
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if reason or high <= low:
        return DisplayMap(np.zeros_like(finite), low, max(high, low), True, reason or "the map is flat")
    heat = np.clip((finite - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return DisplayMap(heat, low, high, False, "")


def smooth(relevance: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """A Gaussian-smoothed copy (sigma as a share of the longer side), for outlining speckled maps."""
    relevance = np.asarray(relevance, np.float32)
    pixels = max(sigma * max(relevance.shape), 0.5)
    return cv2.GaussianBlur(relevance, (0, 0), sigmaX=pixels, sigmaY=pixels)


def contour_mask(display: DisplayMap, percent: float, method: str) -> np.ndarray:
    """The top-`percent` % region to outline: none for an empty map; speckled methods are smoothed first."""
    if display.empty:
        return np.zeros(display.heat.shape, bool)
    heat = smooth(display.heat) if method in SPECKLED_METHODS else display.heat
    return top_region(heat, percent)


# Window presets as (centre, width) shares of the file's value range: lung fields are dark on a radiograph (low
# density), the mediastinum mid-grey, bone bright. The file's own window is the reset.
WINDOW_PRESETS = {"lung": (0.35, 0.70), "mediastinum": (0.55, 0.35), "bone": (0.75, 0.45)}


def window_presets(raw: np.ndarray, photometric: str | None = None) -> dict[str, tuple[float, float]]:
    """Display window presets (centre, width in the file's raw units) for one image: lung, mediastinum, bone.
    For MONOCHROME1 files (white = low values) the centres mirror, so each preset shows the same tissue."""
    lo, hi = float(np.min(raw)), float(np.max(raw))
    span = max(hi - lo, 1.0)
    out = {}
    for name, (centre, width) in WINDOW_PRESETS.items():
        share = 1.0 - centre if photometric == "MONOCHROME1" else centre
        out[name] = (lo + share * span, max(width * span, 1.0))
    return out


def _label(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def export_tile(rgb: np.ndarray, contour: list[np.ndarray], truth: list[np.ndarray], display: DisplayMap,
                colour_map: str, caption: list[str], note: str | None = None) -> np.ndarray:
    """The tile as an exported image: overlay with its contour (white) and ground-truth outline (green), a colour
    bar with its values on the right, the caption lines below and `note` (the out-of-domain banner, where the guard
    fired) on a red strip above; RGB uint8."""
    image = np.ascontiguousarray(rgb.copy())
    for lines, colour in ((contour, (255, 255, 255)), (truth, (0, 230, 118))):
        for line in lines:
            points = np.round(line).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
    height = image.shape[0]
    bar = np.zeros((height, 70, 3), np.uint8)
    ramp = np.linspace(255, 0, max(height - 40, 2)).astype(np.uint8)[:, None]
    code = getattr(cv2, COLOUR_MAPS.get(colour_map, COLOUR_MAPS["jet"]))
    coloured = cv2.applyColorMap(np.repeat(ramp, 16, axis=1), code)[..., ::-1]
    bar[20:20 + len(ramp), 8:24] = coloured
    _label(bar, f"{display.high:.3g}", (28, 28), 0.4)
    _label(bar, f"{display.low:.3g}", (28, height - 20), 0.4)
    image = np.concatenate([image, bar], axis=1)
    strip = np.zeros((18 * len(caption) + 8, image.shape[1], 3), np.uint8)
    for i, line in enumerate(caption):
        _label(strip, line, (6, 18 * (i + 1)))
    return with_note(np.concatenate([image, strip], axis=0), note)
