"""File bytes -> `Radiograph`: PNG, JPEG, TIFF (8/16-bit, grey/RGB/RGBA) and DICOM, with size guards."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
ACCEPTED = "PNG, JPEG or TIFF (8- or 16-bit, grey, RGB or RGBA) or a single-frame DICOM file"

# We guard the pixel count ourselves before decoding, with a clearer message than Pillow's warning.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class RadiographError(ValueError):
    """A file that cannot be turned into a radiograph; the message says what is wrong and what is accepted."""


class EmptyFileError(RadiographError):
    """The file has no bytes."""


class FileTooLargeError(RadiographError):
    """The file is larger than the configured byte limit."""


class ImageTooLargeError(RadiographError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class UnsupportedFormatError(RadiographError):
    """The bytes are not an image format we read."""


class CorruptImageError(RadiographError):
    """The file claims a known format but cannot be decoded (truncated or damaged)."""


class UnsupportedDicomError(RadiographError):
    """A valid DICOM object we cannot display as a single radiograph (multi-frame, no pixels, codec)."""


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: display pixels in [0, 1] (white = dense) plus the values before windowing."""

    pixels: np.ndarray
    raw: np.ndarray
    meta: dict[str, Any]
    sha256: str
    source_name: str = "image"

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    @classmethod
    def from_array(cls, pixels: np.ndarray, source_name: str = "array") -> Radiograph:
        """A radiograph from [0, 1] pixels already in memory (phantom cases, batch jobs); hashed by content."""
        pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
        if pixels.ndim != 2:
            raise UnsupportedFormatError(f"Expected a 2-D grey image; got an array of shape {pixels.shape}.")
        digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
        return cls(pixels, pixels.copy(), {"format": "array", "size": list(pixels.shape[::-1])}, digest, source_name)


def apply_window(raw: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1]."""
    x = raw.astype(np.float32, copy=False)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))).astype(np.float32)
    if function == "LINEAR_EXACT":
        out = (x - center) / max(width, 1e-6) + 0.5
    else:
        out = (x - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def rewindow(radiograph: Radiograph, center: float, width: float) -> Radiograph:
    """The same radiograph shown through another window (centre/width in `raw` units)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    pixels = apply_window(radiograph.raw, center, width, radiograph.meta.get("voi_function", "LINEAR"))
    if radiograph.meta.get("photometric") == "MONOCHROME1":
        pixels = 1.0 - pixels
    meta = dict(radiograph.meta, window=[float(center), float(width)])
    return replace(radiograph, pixels=pixels, meta=meta)


def _read_source(source: bytes | str | Path, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "upload"
    else:
        path = Path(source)
        if not path.is_file():
            raise RadiographError(f"{path}: no such file. Expected a {ACCEPTED}.")
        size = path.stat().st_size
        if size > max_bytes:
            raise FileTooLargeError(_too_large_message(size, max_bytes))
        data = path.read_bytes()
        name = path.name
    if len(data) > max_bytes:
        raise FileTooLargeError(_too_large_message(len(data), max_bytes))
    if not data:
        raise EmptyFileError(f"The file is empty (0 bytes). Expected a {ACCEPTED}.")
    return data, name


def _too_large_message(size: int, max_bytes: int) -> str:
    return f"The file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. Expected a {ACCEPTED}."


def sniff_format(data: bytes, name: str = "") -> str:
    """'dicom', 'png', 'jpeg', 'tiff' or 'unknown', from magic bytes (file name only as a DICOM hint)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if name.lower().endswith((".dcm", ".dicom", ".dic")):
        return "dicom"
    return "unknown"


def check_pixel_count(rows: int, cols: int, max_pixels: int) -> None:
    """Refuse images whose pixel count exceeds the limit before any decoding."""
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"The image is {cols} x {rows} = {rows * cols / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:.0f} megapixels. Downsample it or raise the limit."
        )


def load_radiograph(
    source: bytes | str | Path,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Radiograph:
    """Decode PNG/JPEG/TIFF/DICOM bytes or a path into a `Radiograph`; raises `RadiographError` subclasses."""
    data, default_name = _read_source(source, max_bytes)
    name = name or default_name
    digest = hashlib.sha256(data).hexdigest()
    kind = sniff_format(data, name)
    if kind == "dicom":
        from xai_core.dicom import read_dicom

        return read_dicom(data, sha256=digest, source_name=name, max_pixels=max_pixels)
    if kind == "unknown":
        raise UnsupportedFormatError(f"'{name}' is not a recognised image file. Expected a {ACCEPTED}.")
    pixels, raw, meta = _decode_raster(data, kind, name, max_pixels)
    return Radiograph(pixels=pixels, raw=raw, meta=meta, sha256=digest, source_name=name)


_GREY_MAX = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def _decode_raster(data: bytes, kind: str, name: str, max_pixels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"'{name}' is too large to decode safely ({exc}).") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise CorruptImageError(f"'{name}' looks like {kind.upper()} but cannot be read: {exc}. "
                                f"Expected a {ACCEPTED}.") from exc
    width, height = image.size
    check_pixel_count(height, width, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise UnsupportedFormatError(f"'{name}' has {frames} frames; one radiograph per file is accepted.")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        raw, maxval = _to_grey_array(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"'{name}' is damaged or truncated ({exc}). Expected a {ACCEPTED}.") from exc
    if maxval is None:
        lo, hi = float(np.min(raw)), float(np.max(raw))
        center, width_ = (lo + hi) / 2.0 + 0.5, max(hi - lo, 1e-6) + 1.0
    else:
        center, width_ = (maxval + 1.0) / 2.0, maxval + 1.0
    pixels = apply_window(raw, center, width_)
    meta = {
        "format": kind.upper(),
        "modality": None,
        "view": None,
        "rows": int(raw.shape[0]),
        "columns": int(raw.shape[1]),
        "spacing_mm": None,
        "bits": 16 if maxval == 65535.0 else (8 if maxval == 255.0 else None),
        "source_mode": image.mode,
        "photometric": "MONOCHROME2",
        "window": [float(center), float(width_)],
        "voi_function": "LINEAR",
    }
    return pixels, raw, meta


def _to_grey_array(image: Image.Image) -> tuple[np.ndarray, float | None]:
    """Grey values and their full-scale value (None for float images: use the data range)."""
    mode = image.mode
    if mode in _GREY_MAX:
        arr = np.asarray(image)
        if mode == "1":
            arr = arr.astype(np.uint8)
        return arr, _GREY_MAX[mode]
    if mode == "I":
        arr = np.asarray(image)
        maxval = 65535.0 if arr.min() >= 0 and arr.max() <= 65535 else None
        return arr.astype(np.int32 if maxval else np.float32), maxval
    if mode == "F":
        return np.asarray(image, dtype=np.float32), None
    if mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA").convert("RGB")
    return np.asarray(image.convert("L")), 255.0


def to_png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of [0, 1] pixels (for thumbnails and downloads)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def read_mask_png(path: str | Path) -> np.ndarray:
    """A ground-truth mask PNG (any non-zero pixel is inside) as a boolean array."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0
