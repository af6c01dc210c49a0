"""Heatmap overlays as images (for files and reports; the dashboard draws its own with plotly)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def overlay_png(pixels: np.ndarray, relevance: np.ndarray, opacity: float = 0.45, max_side: int = 1024) -> bytes:
    """PNG of the image with the relevance map (min-max scaled, jet colours) blended on top."""
    import cv2

    scale = min(1.0, max_side / max(pixels.shape))
    if scale < 1.0:
        size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        relevance = cv2.resize(relevance, size, interpolation=cv2.INTER_LINEAR)
    lo, hi = float(relevance.min()), float(relevance.max())
    heat = np.zeros_like(relevance) if hi <= lo else (relevance - lo) / (hi - lo)
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
    grey = np.repeat((np.clip(pixels, 0, 1) * 255)[..., None], 3, axis=2)
    alpha = opacity * heat[..., None]
    blended = (grey * (1 - alpha) + colours * alpha).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    return buf.getvalue()
