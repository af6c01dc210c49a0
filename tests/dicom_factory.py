"""Builders for DICOM test files, written by the tests themselves (no external data)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

SYNTHETIC_IDENTIFIERS = {
    "PatientName": "SYNTHETIC^PATIENT^ZZTEST",
    "PatientID": "SYN-PID-424242",
    "PatientBirthDate": "19010203",
    "PatientAddress": "1 Synthetic Road, Testville",
    "InstitutionName": "Synthetic General Hospital",
    "AccessionNumber": "SYNACC998877",
}


def make_dataset(pixels: np.ndarray, *, bits_stored: int = 12, photometric: str = "MONOCHROME2",
                 **attributes: object) -> pydicom.Dataset:
    """An uncompressed single-frame CR dataset with synthetic identifiers."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in SYNTHETIC_IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if pixels.dtype.itemsize == 2 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelSpacing = [0.2, 0.2]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def write(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)
                self.acc, self.n = 0, 0

    def flush(self) -> bytes:
        if self.n:
            self.write((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


def jpeg_lossless_sv1(pixels: np.ndarray, precision: int) -> bytes:
    """Encode a grey image as JPEG Lossless, Process 14, selection value 1 (left predictor).

    Minimal writer for tests: one Huffman table giving every difference category (0..16) a 5-bit code.
    """
    height, width = pixels.shape
    img = pixels.astype(np.int64)
    pred = np.empty_like(img)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = img[0, :-1]
    pred[1:, 0] = img[:-1, 0]
    pred[1:, 1:] = img[1:, :-1]
    diff = img - pred
    bits = _BitWriter()
    for d in diff.ravel().tolist():
        category = int(abs(d)).bit_length()
        bits.write(category, 5)
        if category:
            bits.write(d if d >= 0 else d + (1 << category) - 1, category)
    scan = bits.flush()
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sof = bytes([precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + scan + b"\xff\xd9"


def as_jpeg_lossless(ds: pydicom.Dataset, pixels: np.ndarray) -> pydicom.Dataset:
    """The dataset re-encoded as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70)."""
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([jpeg_lossless_sv1(pixels, int(ds.BitsStored))])
    ds["PixelData"].VR = "OB"
    return ds
