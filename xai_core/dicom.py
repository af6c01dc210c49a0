"""DICOM bytes -> `Radiograph`: modality LUT, VOI LUT or window, MONOCHROME1 inversion, de-identified metadata."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from xai_core.imaging import (
    CorruptImageError,
    Radiograph,
    UnsupportedDicomError,
    apply_window,
    check_pixel_count,
)

# Metadata we expose. Everything else (names, IDs, dates, addresses, institutions, UIDs) stays out.
_SAFE_TAGS = {
    "Modality": "modality",
    "ViewPosition": "view",
    "BodyPartExamined": "body_part",
    "BitsStored": "bits",
    "PhotometricInterpretation": "photometric",
}


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _spacing(ds: pydicom.Dataset) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return [float(value[0]), float(value[1])]
    return None


def supported_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes whose pixel data this installation can decode."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    names = []
    for uid, (decoder, *_rest) in _PIXEL_DATA_DECODERS.items():
        if decoder.is_available:
            names.append(pydicom.uid.UID(uid).name)
    return sorted(names)


def _decode_pixels(ds: pydicom.Dataset, name: str) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if "decod" in str(exc).lower() or "plugin" in str(exc).lower() or "support" in str(exc).lower():
            raise UnsupportedDicomError(
                f"'{name}' uses the transfer syntax {pydicom.uid.UID(syntax).name} ({syntax}), which cannot be "
                f"decoded here. Supported: {', '.join(supported_transfer_syntaxes())}."
            ) from exc
        raise CorruptImageError(f"'{name}': the DICOM pixel data cannot be decoded ({exc}).") from exc
    except (ValueError, EOFError, OSError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise CorruptImageError(
            f"'{name}': the DICOM pixel data is damaged or truncated ({exc}). Expected a complete single-frame file."
        ) from exc


def read_dicom(data: bytes, *, sha256: str, source_name: str, max_pixels: int) -> Radiograph:
    """Decode one single-frame DICOM image into display pixels (white = dense) and pre-window values."""
    name = source_name
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, struct.error) as exc:
        raise CorruptImageError(f"'{name}' is not a readable DICOM file ({exc}).") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedDicomError(
            f"'{name}' is a DICOM file without pixel data (for example a report or presentation state). "
            "Expected a DICOM image."
        )
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptImageError(f"'{name}': the DICOM image has no valid Rows/Columns ({exc}).") from exc
    if frames > 1:
        raise UnsupportedDicomError(
            f"'{name}' is a multi-frame DICOM ({frames} frames). Only single-frame radiographs are accepted; "
            "export the frame you want as its own file."
        )
    check_pixel_count(rows, cols, max_pixels)
    arr = _decode_pixels(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:
        # Colour DICOM (RGB, or YBR already converted to RGB by pydicom): ITU-R 601 luma.
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        photometric = "MONOCHROME2"
        raw = arr.astype(np.float32)
    else:
        raw = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)

    voi_function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    window: list[float] | None = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        descriptor = item.LUTDescriptor
        bits = int(descriptor[2])
        lut_input = np.rint(raw).astype(np.int64)
        lut_out = np.asarray(apply_voi_lut(lut_input, ds, index=0, prefer_lut=True), dtype=np.float32)
        pixels = np.clip(lut_out / float(2**bits - 1), 0.0, 1.0)
        voi_function = "LUT"
    else:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        else:
            lo, hi = float(raw.min()), float(raw.max())
            center, width = (lo + hi) / 2.0 + 0.5, max(hi - lo, 1e-6) + 1.0
            voi_function = "LINEAR"
        window = [center, width]
        pixels = apply_window(raw, center, width, voi_function)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels

    meta: dict[str, Any] = {"format": "DICOM"}
    for keyword, key in _SAFE_TAGS.items():
        value = ds.get(keyword)
        meta[key] = None if value in (None, "") else (int(value) if key == "bits" else str(value))
    meta.update(
        rows=rows,
        columns=cols,
        spacing_mm=_spacing(ds),
        window=window,
        voi_function=voi_function,
        photometric=photometric,
        transfer_syntax=pydicom.uid.UID(ds.file_meta.TransferSyntaxUID).name,
    )
    return Radiograph(pixels=pixels.astype(np.float32), raw=raw, meta=meta, sha256=sha256, source_name=name)

