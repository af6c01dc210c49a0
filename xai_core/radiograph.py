"""The `Radiograph` contract, its error classes and the checks every decoder shares (no decoding here).

`imaging` (rasters, the entry point) and `dicom` both import this module; it imports neither.

Limits, checked before any pixel is decoded:
- at most `DEFAULT_MAX_BYTES` bytes of file (and of inflated data for deflated DICOM);
- at most `DEFAULT_MAX_PIXELS` pixels, counted from the real stream header where there is one;
- every side at least `MIN_SIDE` pixels and a long:short side ratio of at most `MAX_ASPECT`;
- DICOM sequence items nested at most `xai_core.dicom.MAX_SEQUENCE_DEPTH` (64) deep;
- pixel values, windows, rescale slopes and intercepts finite and within +-`MAX_ABS_VALUE`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from xai_core.errors import InputError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 16
MAX_ASPECT = 20.0
MAX_ABS_VALUE = 1e10
ACCEPTED = "PNG, JPEG or TIFF (8- or 16-bit, grey, RGB or RGBA) or a single-frame DICOM file"


class RadiographError(InputError):
    """A file that cannot be turned into a radiograph; the message says what is wrong and what is accepted."""


class EmptyFileError(RadiographError):
    """The file has no bytes."""


class FileTooLargeError(RadiographError):
    """The file (or its inflated content) is larger than the configured byte limit."""


class ImageTooLargeError(RadiographError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class UnsupportedFormatError(RadiographError):
    """The bytes are not an image format we read."""


class CorruptImageError(RadiographError):
    """The file claims a known format but cannot be decoded (truncated or damaged)."""


class UnsupportedDicomError(RadiographError):
    """A valid DICOM object we cannot display as a single radiograph (multi-frame, no pixels, codec)."""


class ImageShapeError(RadiographError):
    """The image is too small on one side or too elongated to be a radiograph."""


class NonFinitePixelsError(CorruptImageError):
    """The pixel values contain NaN or infinity, or values too large to display faithfully."""


class InvalidValueError(RadiographError):
    """A number in the file (rescale slope/intercept, LUT descriptor, ...) that is missing, unparseable or absurd."""


class InvalidWindowError(InvalidValueError):
    """A window centre/width that is not finite, out of range, or a non-positive width."""


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
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 2:
            raise UnsupportedFormatError(f"Expected a 2-D grey image; got an array of shape {pixels.shape}.")
        if not np.isfinite(pixels).all():
            raise NonFinitePixelsError("The array contains NaN or infinite values; expected finite values in [0, 1].")
        pixels = np.clip(pixels, 0.0, 1.0)
        digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
        return cls(pixels, pixels.copy(), {"format": "array", "size": list(pixels.shape[::-1])}, digest, source_name)


def describe(exc: BaseException) -> str:
    """One short line naming an exception (no traceback, no multi-line library text)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def decode_guard(name: str, kind: str) -> Iterator[None]:
    """Turn any failure inside a decoder into a `RadiographError` with a one-line message."""
    try:
        yield
    except RadiographError:
        raise
    except RecursionError:
        raise CorruptImageError(
            f"'{name}' is nested too deeply to read (DICOM sequences nested hundreds of levels deep or a "
            f"self-referencing structure). Expected a {ACCEPTED}."
        ) from None
    except MemoryError:
        raise ImageTooLargeError(
            f"'{name}' needs more memory to decode than this machine has. Downsample it or raise the limits."
        ) from None
    except Exception as exc:
        raise CorruptImageError(
            f"'{name}' looks like {kind} but cannot be decoded ({describe(exc)}). Expected a {ACCEPTED}."
        ) from exc


def check_pixel_count(rows: int, cols: int, max_pixels: int) -> None:
    """Refuse images whose pixel count exceeds the limit before any decoding."""
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"The image is {cols} x {rows} = {rows * cols / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:.0f} megapixels. Downsample it or raise the limit."
        )


def check_shape(rows: int, cols: int, max_pixels: int) -> None:
    """Refuse too many pixels, a side under `MIN_SIDE` or an aspect ratio over `MAX_ASPECT`, before decoding."""
    check_pixel_count(rows, cols, max_pixels)
    short, long = min(rows, cols), max(rows, cols)
    if short < MIN_SIDE:
        raise ImageShapeError(
            f"The image is {cols} x {rows} pixels; every side must be at least {MIN_SIDE} pixels."
        )
    if long > MAX_ASPECT * short:
        raise ImageShapeError(
            f"The image is {cols} x {rows} pixels, an aspect ratio of {long / short:.0f}:1; at most "
            f"{MAX_ASPECT:.0f}:1 is accepted for a radiograph."
        )


def check_finite(values: np.ndarray, what: str = "pixel values") -> None:
    """Refuse NaN, infinity or magnitudes over `MAX_ABS_VALUE` (these would display as a false all-clear)."""
    if values.size == 0:
        raise CorruptImageError(f"The image has no {what}.")
    if values.dtype.kind in "biu" and values.dtype.itemsize <= 4:
        return
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFinitePixelsError(
            f"The {what} contain NaN or infinity; every value must be a finite number. The file is damaged."
        )
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        raise NonFinitePixelsError(
            f"The {what} reach {max(abs(lo), abs(hi)):.3g}; at most +-{MAX_ABS_VALUE:.0e} is accepted."
        )


def check_number(value: Any, what: str, *, nonzero: bool = False, limit: float = MAX_ABS_VALUE) -> float:
    """`value` as a finite float within +-`limit`, or an `InvalidValueError` naming `what`."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        shown = str(value)[:40]
        raise InvalidValueError(f"{what} is {shown!r}, not a number. Expected a finite decimal number.") from None
    if not math.isfinite(number) or abs(number) > limit or (nonzero and number == 0.0):
        bound = "non-zero and " if nonzero else ""
        raise InvalidValueError(f"{what} is {number:g}; it must be {bound}finite and within +-{limit:.0e}.")
    return number


def check_window(center: Any, width: Any, function: str = "LINEAR") -> tuple[float, float]:
    """A valid (centre, width): finite, centre within +-`MAX_ABS_VALUE`, width up to the span of such values and
    above 0 (at least 1 for LINEAR, DICOM PS3.3 C.11.2.1.2); an `InvalidWindowError` otherwise."""
    function = (function or "LINEAR").upper()
    try:
        c = check_number(center, "The window centre")
        w = check_number(width, "The window width", limit=2 * MAX_ABS_VALUE + 1)
    except InvalidValueError as exc:
        raise InvalidWindowError(str(exc)) from None
    if function in ("LINEAR_EXACT", "SIGMOID"):
        if w <= 0.0:
            raise InvalidWindowError(f"The window width is {w:g}; for a {function} window it must be above 0.")
    elif w < 1.0:
        raise InvalidWindowError(f"The window width is {w:g}; for a LINEAR window it must be at least 1.")
    return c, w


def apply_window(raw: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1]; refuses invalid windows."""
    center, width = check_window(center, width, function)
    function = (function or "LINEAR").upper()
    x = raw.astype(np.float32, copy=True)
    if function == "SIGMOID":
        x -= center
        x *= -4.0 / width
        with np.errstate(over="ignore"):
            np.exp(x, out=x)
        x += 1.0
        np.reciprocal(x, out=x)
    else:
        if function == "LINEAR_EXACT":
            x -= center
            x /= width
        else:
            x -= center - 0.5
            x /= max(width - 1.0, 1e-6)
        x += 0.5
    np.clip(x, 0.0, 1.0, out=x)
    return x
