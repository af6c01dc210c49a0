"""File bytes -> `Radiograph`: PNG, JPEG, TIFF (8/16-bit, grey/RGB/RGBA) and DICOM, with size guards.

Every failure is a `RadiographError` (see `xai_core.radiograph` for the classes and the limits); sizes, page counts
and shapes are checked from the file's headers before any pixel is decoded. The `Radiograph` contract, the error
classes and the window helpers live in `xai_core.radiograph` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai_core.dicom import read_dicom
from xai_core.radiograph import (
    ACCEPTED,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT,
    MIN_SIDE,
    CorruptImageError,
    EmptyFileError,
    FileTooLargeError,
    ImageShapeError,
    ImageTooLargeError,
    InvalidValueError,
    InvalidWindowError,
    NonFinitePixelsError,
    Radiograph,
    RadiographError,
    UnsupportedDicomError,
    UnsupportedFormatError,
    apply_window,
    check_finite,
    check_pixel_count,
    check_shape,
    decode_guard,
    describe,
)

__all__ = [
    "ACCEPTED",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT",
    "MIN_SIDE",
    "CorruptImageError",
    "EmptyFileError",
    "FileTooLargeError",
    "ImageShapeError",
    "ImageTooLargeError",
    "InvalidValueError",
    "InvalidWindowError",
    "NonFinitePixelsError",
    "Radiograph",
    "RadiographError",
    "UnsupportedDicomError",
    "UnsupportedFormatError",
    "apply_window",
    "check_pixel_count",
    "load_radiograph",
    "read_mask_png",
    "rewindow",
    "sniff_format",
    "to_png_bytes",
]

# We guard the pixel count ourselves before decoding, with a clearer message than Pillow's warning.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_PIL_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG"], "tiff": ["TIFF"]}  # JPEG also opens MPO files


def rewindow(radiograph: Radiograph, center: float, width: float) -> Radiograph:
    """The same radiograph shown through another window (centre/width in `raw` units); `InvalidWindowError` if bad."""
    pixels = apply_window(radiograph.raw, center, width, radiograph.meta.get("voi_function", "LINEAR"))
    if radiograph.meta.get("photometric") == "MONOCHROME1":
        pixels = 1.0 - pixels
    meta = dict(radiograph.meta, window=[float(center), float(width)])
    return replace(radiograph, pixels=pixels, meta=meta)


def _read_source(source: bytes | bytearray | memoryview | str | Path, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_bytes:
            raise FileTooLargeError(_too_large_message(len(source), max_bytes))
        data = bytes(source)
        name = "upload"
    else:
        path = Path(source)
        try:
            if not path.is_file():
                raise RadiographError(f"{path}: no such file. Expected a {ACCEPTED}.")
            size = path.stat().st_size
            if size > max_bytes:
                raise FileTooLargeError(_too_large_message(size, max_bytes))
            data = path.read_bytes()
        except OSError as exc:
            raise RadiographError(f"{path} cannot be read ({describe(exc)}). Expected a {ACCEPTED}.") from exc
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


def load_radiograph(
    source: bytes | str | Path,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Radiograph:
    """Decode PNG/JPEG/TIFF/DICOM bytes or a path into a `Radiograph`; every failure is a `RadiographError`."""
    data, default_name = _read_source(source, max_bytes)
    name = name or default_name
    digest = hashlib.sha256(data).hexdigest()
    kind = sniff_format(data, name)
    if kind == "unknown":
        raise UnsupportedFormatError(f"'{name}' is not a recognised image file. Expected a {ACCEPTED}.")
    with decode_guard(name, kind.upper()):
        if kind == "dicom":
            radiograph = read_dicom(data, sha256=digest, source_name=name, max_pixels=max_pixels, max_bytes=max_bytes)
        else:
            pixels, raw, meta = _decode_raster(data, kind, name, max_pixels)
            radiograph = Radiograph(pixels=pixels, raw=raw, meta=meta, sha256=digest, source_name=name)
        pixels = radiograph.pixels
        if pixels.ndim != 2 or not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
            raise NonFinitePixelsError(f"'{name}' decodes to invalid display values. The file is damaged.")
    return radiograph


_GREY_MAX = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def _has_more_frames(image: Image.Image, kind: str) -> bool:
    """Whether there is a second frame/page, reading at most one more header (never walking every page)."""
    if kind != "tiff":
        return getattr(image, "n_frames", 1) > 1  # PNG (acTL) and MPO (index) know their count from a header
    try:
        image.seek(1)  # reads only the next TIFF directory
    except EOFError:
        return False
    return True


def _decode_raster(data: bytes, kind: str, name: str, max_pixels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        image = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[kind])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"'{name}' is too large to decode safely ({describe(exc)}).") from exc
    except (MemoryError, RecursionError):
        raise  # decode_guard words these
    except Exception as exc:
        reason = "its header is not valid" if isinstance(exc, UnidentifiedImageError) else describe(exc)
        raise CorruptImageError(f"'{name}' looks like {kind.upper()} but cannot be read ({reason}). "
                                f"Expected a {ACCEPTED}.") from exc
    width, height = image.size
    check_shape(height, width, max_pixels)
    if _has_more_frames(image, kind):
        raise UnsupportedFormatError(f"'{name}' has more than one frame or page; one radiograph per file is accepted.")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        raw, maxval = _to_grey_array(image)
        mode = image.mode
        image.close()  # the decoded copy is no longer needed: free it before windowing
    except (MemoryError, RecursionError):
        raise  # decode_guard words these
    except Exception as exc:
        raise CorruptImageError(f"'{name}' is damaged or truncated ({describe(exc)}). Expected a {ACCEPTED}.") from exc
    del image
    check_shape(*raw.shape, max_pixels)
    check_finite(raw)
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
        "source_mode": mode,
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
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0
