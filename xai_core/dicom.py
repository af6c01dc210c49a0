"""DICOM bytes -> `Radiograph`: modality LUT, VOI LUT or window, MONOCHROME1 inversion, de-identified metadata.

Work and memory are bounded before any pixel is decoded: deflated data sets are inflated with a byte cap,
elements over `DEFER_SIZE` stay unread in the source buffer until used, and for compressed pixel data the size
comes from the JPEG / JPEG-LS / JPEG 2000 frame header inside the first fragment, not only from Rows/Columns.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels import decoders as pixel_decoders
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from xai_core.radiograph import (
    ACCEPTED,
    DEFAULT_MAX_BYTES,
    CorruptImageError,
    FileTooLargeError,
    InvalidValueError,
    Radiograph,
    UnsupportedDicomError,
    apply_window,
    check_finite,
    check_number,
    check_pixel_count,
    check_shape,
    check_window,
    decode_guard,
    describe,
)

# Elements larger than this are not copied out of the source buffer until used (only pixel data ever is).
DEFER_SIZE = 1024 * 1024
# Undefined-length sequence items are parsed recursively by pydicom: refuse deeper nesting before parsing.
MAX_SEQUENCE_DEPTH = 64
_ITEM_MARKERS = re.compile(rb"\xfe\xff(?:\x00\xe0\xff\xff\xff\xff|\x0d\xe0\x00\x00\x00\x00)")

# Metadata we expose. Everything else (names, IDs, dates, addresses, institutions, UIDs) stays out.
_SAFE_TAGS = {
    "Modality": "modality",
    "ViewPosition": "view",
    "BodyPartExamined": "body_part",
    "BitsStored": "bits",
    "PhotometricInterpretation": "photometric",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# JPEG start-of-frame markers (all processes, incl. lossless) and JPEG-LS SOF55.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def supported_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes whose pixel data this installation can decode."""
    decoders = (getattr(pixel_decoders, name) for name in dir(pixel_decoders) if name.endswith("Decoder"))
    return sorted(d.UID.name for d in decoders if isinstance(d, Decoder) and d.is_available)


def read_dicom(
    data: bytes, *, sha256: str, source_name: str, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> Radiograph:
    """Decode one single-frame DICOM image into display pixels (white = dense) and pre-window values."""
    with decode_guard(source_name, "DICOM"):
        ds = _parse(data, source_name, max_bytes)
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            if b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data:
                raise CorruptImageError(
                    f"'{source_name}' is damaged: its pixel data cannot be reached (an element before it is broken "
                    "or truncated). Expected a complete single-frame DICOM file."
                )
            raise UnsupportedDicomError(
                f"'{source_name}' is a DICOM file without pixel data (for example a report or presentation state). "
                "Expected a DICOM image."
            )
        return _to_radiograph(ds, sha256=sha256, name=source_name, max_pixels=max_pixels)


# --- parsing -------------------------------------------------------------------------------------------------------


def _not_group_2(tag: Any, vr: Any, length: int) -> bool:
    return tag >> 16 != 2


def _parse(data: bytes, name: str, max_bytes: int) -> pydicom.Dataset:
    """The data set, with deflated content inflated under a byte cap and big elements deferred."""
    fp = io.BytesIO(data)
    try:
        preamble = read_preamble(fp, force=True)
        file_meta = FileMetaDataset(read_dataset(fp, False, True, stop_when=_not_group_2))
        deflated = file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # an odd file meta (e.g. implicit VR): pydicom's own reader copes or says why below
        deflated = False
    if not deflated:
        _check_nesting(data, name)
        try:
            return pydicom.dcmread(io.BytesIO(data), force=True, defer_size=DEFER_SIZE)
        except (MemoryError, RecursionError):
            raise  # decode_guard words these
        except Exception as exc:
            raise CorruptImageError(f"'{name}' is not a readable DICOM file ({describe(exc)}). "
                                    f"Expected a {ACCEPTED}.") from exc
    inflated = _inflate(data[fp.tell() :], name, max_bytes)
    _check_nesting(inflated, name)
    buffer = io.BytesIO(inflated)
    dataset = read_dataset(buffer, False, True, defer_size=DEFER_SIZE)
    ds = FileDataset(buffer, dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


def _check_nesting(data: bytes, name: str) -> None:
    """Refuse undefined-length sequence items nested over `MAX_SEQUENCE_DEPTH` deep (a recursion bomb)."""
    depth = 0
    for match in _ITEM_MARKERS.finditer(data):
        depth = depth + 1 if match.group()[2] == 0 else max(depth - 1, 0)
        if depth > MAX_SEQUENCE_DEPTH:
            raise CorruptImageError(
                f"'{name}' has DICOM sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep; real images nest a "
                "few levels. The file is damaged or hostile."
            )


def _inflate(deflated: bytes, name: str, max_bytes: int) -> bytes:
    """Inflate a deflated data set only once a streaming pass (1 MB at a time, nothing kept) shows it fits."""
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), deflated, 0
    try:
        while True:
            chunk = inflater.decompress(pending, 1 << 20)
            total += len(chunk)
            pending = inflater.unconsumed_tail
            if total > max_bytes:
                raise FileTooLargeError(
                    f"'{name}' is a deflated DICOM file that inflates to more than {max_bytes / 2**20:.0f} MB, the "
                    "limit for files. Expected a single radiograph."
                )
            if not chunk and not pending:
                break
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated, total) if total else b""
    except zlib.error as exc:
        raise CorruptImageError(f"'{name}': the deflated DICOM data cannot be inflated ({describe(exc)}).") from exc


def _value(ds: pydicom.Dataset, keyword: str) -> Any:
    """The value of `keyword` (None when absent or empty); unparseable values are an `InvalidValueError`."""
    try:
        return ds.get(keyword)
    except (MemoryError, RecursionError):
        raise  # decode_guard words these
    except Exception as exc:
        raise InvalidValueError(f"The DICOM attribute {keyword} cannot be read ({describe(exc)}).") from exc


def _first(value: Any, what: str) -> Any:
    """First value of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            raise InvalidValueError(f"{what} is empty. Expected a number.")
        value = value[0]
    return value


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    value = _value(ds, keyword)
    if value in (None, ""):
        if default is None:
            raise CorruptImageError(f"The DICOM image has no {keyword}. Expected a complete single-frame image.")
        return default
    number = check_number(_first(value, keyword), keyword)
    if number != int(number):
        raise InvalidValueError(f"{keyword} is {number:g}; expected a whole number.")
    return int(number)


def _spacing(ds: pydicom.Dataset) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is not None and len(value) == 2:
                spacing = [float(value[0]), float(value[1])]
                if all(0.0 < s < 1e3 for s in spacing):
                    return spacing
        except Exception:  # informative only: a damaged spacing is left out, never fatal
            continue
    return None


# --- size from the real stream -------------------------------------------------------------------------------------


def _first_fragment(pixel_data: bytes) -> memoryview:
    """The first fragment of encapsulated pixel data (after the basic offset table item)."""
    view, offset = memoryview(pixel_data), 0
    for index in range(2):
        if offset + 8 > len(view):
            break
        group, element, length = struct.unpack_from("<HHI", view, offset)
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            break
        offset += 8
        if index == 1:
            return view[offset : offset + length]
        offset += length
    raise CorruptImageError("The encapsulated DICOM pixel data has no readable fragment.")


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG / JPEG-LS frame header, walking marker segments (no decoding)."""
    if bytes(buf[:2]) != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 9 > len(buf):
                return None
            rows, cols = struct.unpack_from(">HH", buf, i + 5)
            return rows, cols
        if marker in (0xDA, 0xD9):
            return None
        length = struct.unpack_from(">H", buf, i + 2)[0]
        if length < 2:
            return None
        i += 2 + length
    return None


def _j2k_size(buf: memoryview) -> tuple[int, int] | None:
    """(rows, columns) from the SIZ segment of a JPEG 2000 / HTJ2K code stream (raw or inside a JP2 file)."""
    head = bytes(buf[: 64 * 1024])
    at = head.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 24 > len(head):
        return None
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", head, at + 8)
    return max(ysiz - y0, 0), max(xsiz - x0, 0)


def _check_stream(ds: pydicom.Dataset, syntax: UID, rows: int, cols: int, max_pixels: int, name: str) -> None:
    """Refuse compressed pixel data whose frame header disagrees with Rows/Columns or is over the limit."""
    if syntax in JPEG2000TransferSyntaxes:
        size, codec = _j2k_size(_first_fragment(ds.PixelData)), "JPEG 2000"
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        size, codec = _jpeg_size(_first_fragment(ds.PixelData)), "JPEG"
    else:
        return
    if size is None:
        raise CorruptImageError(f"'{name}': the {codec} pixel data has no readable frame header. "
                                "Expected a complete single-frame file.")
    if size != (rows, cols):
        raise CorruptImageError(
            f"'{name}' declares {cols} x {rows} pixels but its {codec} stream holds {size[1]} x {size[0]}; "
            "the file is damaged or mislabelled."
        )
    check_pixel_count(size[0], size[1], max_pixels)


# --- pixels --------------------------------------------------------------------------------------------------------


def _decode_pixels(ds: pydicom.Dataset, name: str) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
    try:
        return ds.pixel_array
    except (MemoryError, RecursionError):
        raise  # decode_guard words these
    except (NotImplementedError, RuntimeError) as exc:
        if "decod" in str(exc).lower() or "plugin" in str(exc).lower() or "support" in str(exc).lower():
            raise UnsupportedDicomError(
                f"'{name}' uses the transfer syntax {UID(syntax).name} ({syntax}), which cannot be "
                f"decoded here. Supported: {', '.join(supported_transfer_syntaxes())}."
            ) from exc
        raise CorruptImageError(f"'{name}': the DICOM pixel data cannot be decoded ({describe(exc)}).") from exc
    except Exception as exc:
        raise CorruptImageError(
            f"'{name}': the DICOM pixel data is damaged or truncated ({describe(exc)}). "
            "Expected a complete single-frame file."
        ) from exc


def _lut_bits(item: pydicom.Dataset, what: str, allowed: range) -> int:
    """Validate a LUT item (descriptor and data length) and return its bits per entry."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        data = item.LUTData
    except (MemoryError, RecursionError):
        raise  # decode_guard words these
    except Exception as exc:
        raise InvalidValueError(f"The {what} is damaged ({describe(exc)}). Expected a descriptor and data.") from exc
    if len(descriptor) != 3 or descriptor[2] not in allowed or not 0 <= descriptor[0] <= 65535:
        raise InvalidValueError(
            f"The {what} descriptor is {descriptor}; expected [entries, first value, bits] with bits in "
            f"{allowed.start}..{allowed.stop - 1}."
        )
    entries = descriptor[0] or 65536
    # OW data is 16-bit words whatever the nominal bits; US data is a number or a list of numbers
    count = len(data) // 2 if isinstance(data, (bytes, bytearray)) else 1 if isinstance(data, int) else len(data or [])
    if count < entries:
        raise InvalidValueError(f"The {what} declares {entries} entries but holds {count}. The file is damaged.")
    return descriptor[2]


def _modality(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> modality values (LUT, or slope/intercept), float32, checked finite."""
    sequence = _value(ds, "ModalityLUTSequence")
    if sequence:
        _lut_bits(sequence[0], "Modality LUT", range(8, 17, 8))
        raw = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:
        raw = arr.astype(np.float32)
        slope, intercept = _value(ds, "RescaleSlope"), _value(ds, "RescaleIntercept")
        if slope is not None and intercept is not None:
            slope = check_number(_first(slope, "RescaleSlope"), "RescaleSlope", nonzero=True)
            intercept = check_number(_first(intercept, "RescaleIntercept"), "RescaleIntercept")
            if slope != 1.0:
                raw *= np.float32(slope)
            if intercept != 0.0:
                raw += np.float32(intercept)
    check_finite(raw, "rescaled pixel values")
    return raw


def _to_radiograph(ds: pydicom.Dataset, *, sha256: str, name: str, max_pixels: int) -> Radiograph:
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit is not False else (
                ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", default=1) or 1
    if frames > 1:
        raise UnsupportedDicomError(
            f"'{name}' is a multi-frame DICOM ({frames} frames). Only single-frame radiographs are accepted; "
            "export the frame you want as its own file."
        )
    check_shape(rows, cols, max_pixels)
    samples = _int(ds, "SamplesPerPixel", default=1)
    if samples not in (1, 3):
        raise UnsupportedDicomError(f"'{name}' has {samples} samples per pixel; 1 (grey) or 3 (colour) is accepted.")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_encapsulated:
        _check_stream(ds, syntax, rows, cols, max_pixels, name)

    arr = _decode_pixels(ds, name)
    if arr.shape[:2] != (rows, cols):
        raise CorruptImageError(f"'{name}' declares {cols} x {rows} pixels but decodes to {arr.shape}.")
    photometric = str(_value(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if arr.ndim == 3:
        # Colour DICOM (RGB, or YBR already converted to RGB by pydicom): ITU-R 601 luma.
        raw = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        photometric = "MONOCHROME2"
        check_finite(raw)
    else:
        raw = _modality(arr, ds)
    del arr
    for keyword in _PIXEL_KEYWORDS:  # frees the encoded bytes and pydicom's cached array before windowing
        if keyword in ds:
            delattr(ds, keyword)

    voi_function = str(_value(ds, "VOILUTFunction") or "LINEAR").upper()
    window: list[float] | None = None
    voi_sequence = _value(ds, "VOILUTSequence")
    if voi_sequence:
        bits = _lut_bits(voi_sequence[0], "VOI LUT", range(8, 17))
        lut_input = np.rint(raw).astype(np.int64)
        lut_out = np.asarray(apply_voi_lut(lut_input, ds, index=0, prefer_lut=True), dtype=np.float32)
        lut_out /= float(2**bits - 1)
        pixels = np.clip(lut_out, 0.0, 1.0, out=lut_out)
        voi_function = "LUT"
    else:
        center, width = _value(ds, "WindowCenter"), _value(ds, "WindowWidth")
        if center not in (None, "") and width not in (None, ""):
            center, width = check_window(_first(center, "WindowCenter"), _first(width, "WindowWidth"), voi_function)
        else:
            lo, hi = float(raw.min()), float(raw.max())
            center, width = (lo + hi) / 2.0 + 0.5, max(hi - lo, 1e-6) + 1.0
            voi_function = "LINEAR"
        window = [center, width]
        pixels = apply_window(raw, center, width, voi_function)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, pixels, out=pixels)

    meta: dict[str, Any] = {"format": "DICOM"}
    for keyword, key in _SAFE_TAGS.items():
        try:
            value = ds.get(keyword)
            meta[key] = None if value in (None, "") else (int(value) if key == "bits" else str(value))
        except Exception:  # descriptive only: a damaged tag is left out
            meta[key] = None
    meta.update(
        rows=rows,
        columns=cols,
        spacing_mm=_spacing(ds),
        window=window,
        voi_function=voi_function,
        photometric=photometric,
        transfer_syntax=syntax.name,
    )
    return Radiograph(pixels=np.asarray(pixels, np.float32), raw=raw, meta=meta, sha256=sha256, source_name=name)
