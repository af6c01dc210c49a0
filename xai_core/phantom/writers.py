"""Write phantom cases to disk: PNG (8/16-bit), DICOM (MONOCHROME2/1), masks, anatomy, reports, fixations."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from xai_core.phantom.gaze import GAZE_VERSION
from xai_core.phantom.generator import ANATOMY, FINDINGS, PHANTOM_VERSION, PhantomCase, generate_case
from xai_core.phantom.text import REFLACX_COLUMNS

CHEST_WIDTH_MM = 350.0
DICOM_BITS = 12


def png_bytes(image: np.ndarray, bits: int = 8) -> bytes:
    """A grey PNG of a [0, 1] image at 8 or 16 bits."""
    maxval = 255 if bits == 8 else 65535
    array = np.round(np.clip(image, 0, 1) * maxval).astype(np.uint8 if bits == 8 else np.uint16)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(case: PhantomCase, monochrome1: bool = False) -> bytes:
    """A 12-bit DX DICOM of the case with obviously synthetic identifiers (to test de-identification)."""
    maxval = 2**DICOM_BITS - 1
    stored = np.round(np.clip(case.image, 0, 1) * maxval).astype(np.uint16)
    if monochrome1:
        stored = (maxval - stored).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[case.case_id])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"PHANTOM^SYNTHETIC^{case.case_id}"
    ds.PatientID = f"SYN-{case.case_id}"
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.StudyDescription = "Synthetic phantom chest radiograph (not a patient)"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = DICOM_BITS
    ds.HighBit = DICOM_BITS - 1
    ds.PixelRepresentation = 0
    spacing = CHEST_WIDTH_MM / stored.shape[1]
    ds.ImagerPixelSpacing = [round(spacing, 4), round(spacing, 4)]
    ds.WindowCenter = (maxval + 1) / 2
    ds.WindowWidth = maxval + 1
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def anatomy_png(case: PhantomCase) -> bytes:
    """The anatomy as one 8-bit PNG: bit i set where structure ANATOMY[i] is (structures may overlap)."""
    packed = np.zeros(case.image.shape, np.uint8)
    for bit, name in enumerate(ANATOMY):
        packed |= case.anatomy[name].astype(np.uint8) << bit
    buf = io.BytesIO()
    Image.fromarray(packed).save(buf, format="PNG")
    return buf.getvalue()


def read_anatomy_png(path: str | Path) -> dict[str, np.ndarray]:
    """Inverse of `anatomy_png`."""
    packed = np.asarray(Image.open(path))
    return {name: ((packed >> bit) & 1).astype(bool) for bit, name in enumerate(ANATOMY)}


def fixations_csv(case: PhantomCase) -> str:
    """Fixations in the REFLACX fixations.csv column layout."""
    size = case.image.shape[0]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(REFLACX_COLUMNS)
    for start, end, x, y in case.fixations:
        writer.writerow([f"{start / 1000:.3f}", f"{end / 1000:.3f}", f"{x:.1f}", f"{y:.1f}", "1.0", "40.0", "40.0",
                         "0.5", "1.0", 0, 0, size, size])
    return out.getvalue()


def write_case(case: PhantomCase, out: Path, index: int, png_bits: int = 8) -> dict[str, Any]:
    """Write one case's files under `out`; returns its row for the split-level files."""
    cid = case.case_id
    (out / "images" / f"{cid}.png").write_bytes(png_bytes(case.image, png_bits))
    (out / "dicom" / f"{cid}.dcm").write_bytes(dicom_bytes(case, monochrome1=index % 2 == 1))
    for name, mask in case.lesions.items():
        (out / "masks" / f"{cid}_{name}.png").write_bytes(png_bytes(mask.astype(np.float32)))
    (out / "anatomy" / f"{cid}.png").write_bytes(anatomy_png(case))
    (out / "fixations" / f"{cid}.csv").write_text(fixations_csv(case))
    return {"image": cid, "labels": "|".join(case.labels) if case.labels else "No Finding", "report": case.report,
            "attributes": case.attributes, "shortcut": case.shortcut}


def _work(args: tuple) -> dict[str, Any]:
    split, index, seed, size, shortcut, out, png_bits, findings = args
    case = generate_case(split, index, seed=seed, size=size, shortcut=shortcut, findings=findings)
    return write_case(case, Path(out), index, png_bits)


def _pool_map(function, jobs: list, workers: int) -> Iterator:
    if workers <= 1 or len(jobs) < 8:
        yield from map(function, jobs)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(function, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))


def write_split(out: str | Path, split: str, n: int, *, seed: int = 0, size: int = 256,
                shortcut: float | None = None, png_bits: int = 8, workers: int | None = None,
                findings: Iterable[list[str] | None] | None = None, progress: bool = True) -> Path:
    """Generate and write `n` cases of a split; returns the output folder."""
    out = Path(out)
    for sub in ("images", "dicom", "masks", "anatomy", "fixations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    forced = list(findings) if findings is not None else [None] * n
    jobs = [(split, i, seed, size, shortcut, str(out), png_bits, forced[i]) for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 8)
    rows = list(tqdm(_pool_map(_work, jobs, workers), total=n, desc=f"phantom {split}", unit="case",
                     disable=not progress))
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels"])
        writer.writerows([row["image"], row["labels"]] for row in rows)
    with (out / "reports.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "report"])
        writer.writerows([row["image"], row["report"]] for row in rows)
    (out / "attributes.json").write_text(json.dumps(
        {row["image"]: {"findings": row["attributes"], "shortcut_tag": row["shortcut"]} for row in rows}, indent=1))
    (out / "manifest.json").write_text(json.dumps({
        "generator": "xai_core.phantom", "phantom_version": PHANTOM_VERSION, "gaze_version": GAZE_VERSION,
        "split": split, "n": n, "seed": seed,
        "size": size, "shortcut": shortcut,
        "png_bits": png_bits, "findings": list(FINDINGS), "anatomy_bits": {name: i for i, name in enumerate(ANATOMY)},
        "dicom": "MONOCHROME2 for even case indices, MONOCHROME1 for odd; 12-bit; synthetic identifiers",
        "sides": "attributes use the patient's side: patient-left is image-right on a PA film",
    }, indent=2))
    return out


def contact_sheet(cases: list[PhantomCase], columns: int = 4, outline: bool = True) -> np.ndarray:
    """An RGB grid of cases with lesion outlines (red) and their labels."""
    tiles = []
    for case in cases:
        tile = cv2.cvtColor((case.image * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        if outline:
            for mask in case.lesions.values():
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(tile, contours, -1, (255, 40, 40), 1)
        text = ", ".join(case.labels) if case.labels else "No Finding"
        scale = tile.shape[0] / 256
        cv2.putText(tile, text, (int(3 * scale), tile.shape[0] - int(5 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.33 * scale, (255, 230, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, 0)
