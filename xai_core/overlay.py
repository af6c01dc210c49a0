"""Heatmap overlays as images (for files and reports; the dashboard draws its own with plotly)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from skimage import measure

from xai_core.errors import ParameterError

COLOUR_MAPS = {"jet": "COLORMAP_JET", "inferno": "COLORMAP_INFERNO", "viridis": "COLORMAP_VIRIDIS",
               "hot": "COLORMAP_HOT", "turbo": "COLORMAP_TURBO"}


def display_scale(relevance: np.ndarray, mode: str, unit_range: bool = False) -> np.ndarray:
    """Relevance in [0, 1] for display: 'per map' (min-max of this map) or 'fixed' (absolute 0-1 for maps that are
    already in [0, 1], such as NEMt's; divided by the map's maximum otherwise, so 0 stays 0)."""
    relevance = np.asarray(relevance, np.float32)
    if mode == "per map":
        lo, hi = float(relevance.min()), float(relevance.max())
        return np.zeros_like(relevance) if hi <= lo else (relevance - lo) / (hi - lo)
    if mode != "fixed":
        raise ParameterError(f"unknown scale mode '{mode}'; use 'per map' or 'fixed'")
    if unit_range:
        return np.clip(relevance, 0.0, 1.0)
    top = float(relevance.max())
    return np.zeros_like(relevance) if top <= 0 else np.clip(relevance / top, 0.0, 1.0)


def blend(pixels: np.ndarray, heat: np.ndarray, opacity: float = 0.45, colour_map: str = "jet") -> np.ndarray:
    """RGB uint8 image: grey radiograph with the [0, 1] heat coloured on top, more opaque where heat is high."""
    if colour_map not in COLOUR_MAPS:
        raise ParameterError(f"unknown colour map '{colour_map}'; known: {', '.join(COLOUR_MAPS)}")
    code = getattr(cv2, COLOUR_MAPS[colour_map])
    colours = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), code)[..., ::-1].astype(np.float32)
    grey = np.repeat((np.clip(pixels, 0, 1) * 255)[..., None], 3, axis=2)
    alpha = opacity * np.clip(heat, 0, 1)[..., None]
    return (grey * (1 - alpha) + colours * alpha).astype(np.uint8)


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscaled so that its longer side is at most max_side (area interpolation); unchanged if smaller."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def top_region(relevance: np.ndarray, percent: float) -> np.ndarray:
    """Boolean mask of the top `percent` % pixels of a map."""
    threshold = np.quantile(relevance, 1 - percent / 100)
    return relevance >= threshold if relevance.max() > relevance.min() else np.zeros(relevance.shape, bool)


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Contour polylines [N, 2] (x, y) around a boolean mask, for drawing on an image."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    return [c[:, ::-1] - 1 for c in measure.find_contours(padded, 0.5)]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def maps_npz(maps: dict[str, np.ndarray], **meta: str) -> bytes:
    """A compressed NPZ with one float32 array per method (model-input resolution) plus text metadata."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in maps.items()},
                        **{f"meta_{k}": np.array(v) for k, v in meta.items()})
    return buf.getvalue()


NOTE_BACKGROUND = (176, 0, 32)  # a dark red strip: the out-of-domain note on exported images
NOTE_SCALE = 0.45
NOTE_LINE_PX = 18


def wrap_text(text: str, width_px: int, scale: float = NOTE_SCALE) -> list[str]:
    """Words of `text` in lines that fit `width_px` in OpenCV's simplex font at `scale`."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        fits = cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width_px
        if lines and fits:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def with_note(rgb: np.ndarray, note: str | None) -> np.ndarray:
    """The RGB uint8 image with `note` in white on a dark red strip above it (unchanged without a note): how
    exported images say that they are unreliable."""
    if not note:
        return rgb
    width = rgb.shape[1]
    scale = max(NOTE_SCALE, width / 1600)  # readable on large images too
    line_px = round(NOTE_LINE_PX * scale / NOTE_SCALE)
    lines = wrap_text(note, max(width - 12, 40), scale)
    strip = np.empty((line_px * len(lines) + line_px // 2, width, 3), np.uint8)
    strip[:] = NOTE_BACKGROUND
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (6, line_px * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    1 if scale < 0.7 else 2, cv2.LINE_AA)
    return np.concatenate([strip, np.ascontiguousarray(rgb, np.uint8)], axis=0)


def overlay_png(pixels: np.ndarray, relevance: np.ndarray, opacity: float = 0.45, max_side: int = 1024,
                note: str | None = None) -> bytes:
    """PNG of the image (longer side at most `max_side`) with the relevance map, min-max scaled, blended on top, and
    `note` (e.g. the out-of-domain banner) on a strip above it where given."""
    pixels = shrink(np.asarray(pixels, np.float32), max_side)
    relevance = cv2.resize(np.asarray(relevance, np.float32), pixels.shape[::-1], interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    Image.fromarray(with_note(blend(pixels, display_scale(relevance, "per map"), opacity), note)).save(buf,
                                                                                                      format="PNG")
    return buf.getvalue()
