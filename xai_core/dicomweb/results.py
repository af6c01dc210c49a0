"""Explanation results as DICOM objects made with highdicom, for the PACS the source image came from.

Each object is in a new series of the source study and references the source study, series, SOP instance and frame
of reference; each has the source's Rows x Columns:
- `relevance_overlay`: a Secondary Capture (RGB) of the radiograph with the relevance map blended on top
  (`xai_core.overlay.blend` / `display_scale`), the colour bar burned in and "NOT FOR DIAGNOSTIC USE" in the image
  and the series description. A Parametric Map is not written: highdicom 0.28 cannot build one for a projection
  radiograph without patient-space plane positions (CR/DX have none), which is the case the issue's Secondary Capture
  fall-back covers; every viewer displays a Secondary Capture.
- `region_segmentation`: a binary DICOM Segmentation of the top-p% relevance region (and the SegX-refined region,
  when given), one segment each.

The objects carry the source's patient and study modules, as DICOM requires: they are meant for the PACS only and
are never written to the case store, a cache or a log. Source frames of reference are referenced when present; the
UIDs missing from a source are completed with `prepare_for_pacs` (deterministic, from its SOP Instance UID).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from xai_core.dicomweb.client import dataset_from_bytes, prepare_for_pacs
from xai_core.errors import InputError
from xai_core.imaging import load_radiograph
from xai_core.overlay import blend, display_scale, top_region

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
MANUFACTURER = "xai-dashboard"
MODEL_NAME = "Chest X-ray XAI dashboard"
SOFTWARE_VERSION = "1"
OVERLAY_SERIES_NUMBER = 9001
SEGMENTATION_SERIES_NUMBER = 9002
# Type 2 patient/study attributes highdicom copies from the source: present (empty) when the source lacks them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def new_instance(series_number: int) -> dict[str, Any]:
    """The identity of a result object for highdicom's constructors: a new series and instance, made by us."""
    return {"series_instance_uid": generate_uid(), "series_number": series_number,
            "sop_instance_uid": generate_uid(), "instance_number": 1, "manufacturer": MANUFACTURER}


@dataclass(frozen=True)
class ResultInfo:
    """What the results describe (for descriptions; no identifiers)."""

    method: str
    target: str
    model: str
    out_of_domain: str = ""  # the out-of-domain guard's note where it fired (xai_core.models.ood), else empty

    def text(self) -> str:
        return f"{self.method} relevance for {self.target} ({self.model})"

    def warning(self) -> str:
        """The sentence every result object carries when the guard fired, else empty."""
        return f" OUT OF DOMAIN: {self.out_of_domain}" if self.out_of_domain else ""


def source_dataset(source: Dataset | bytes) -> Dataset:
    """The source image as a pydicom data set (bytes are parsed), with the UIDs a PACS needs and the Type 2
    attributes highdicom copies present; the caller's data set is never modified."""
    ds = dataset_from_bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else copy.deepcopy(source)
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise InputError("The source DICOM has no image; results can only be made for an image.")
    ds = prepare_for_pacs(ds)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _check_map(ds: Dataset, relevance: np.ndarray) -> np.ndarray:
    relevance = np.asarray(relevance, np.float32)
    shape = (int(ds.Rows), int(ds.Columns))
    if relevance.shape != shape:
        raise InputError(f"The relevance map is {relevance.shape[1]} x {relevance.shape[0]} pixels but the source "
                         f"image is {shape[1]} x {shape[0]}: resize it to the image first "
                         "(Explanation.resized_to_image).")
    if not np.isfinite(relevance).all():
        raise InputError("The relevance map contains NaN or infinite values.")
    return relevance


def _display_pixels(ds: Dataset) -> np.ndarray:
    """The source as the dashboard shows it: [0, 1], white = dense (through the hardened reader)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return load_radiograph(buffer.getvalue(), name="source.dcm").pixels


def _references(result: Dataset, ds: Dataset) -> None:
    """Source image, series and frame of reference references (Common Instance Reference and General Image)."""
    image = Dataset()
    image.ReferencedSOPClassUID = ds.SOPClassUID
    image.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if "SourceImageSequence" not in result:
        source_item = copy.deepcopy(image)
        source_item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept("121322", "DCM",
                                                                         "Source image for image processing operation")]
        result.SourceImageSequence = [source_item]
    if "ReferencedSeriesSequence" not in result:
        series = Dataset()
        series.SeriesInstanceUID = ds.SeriesInstanceUID
        series.ReferencedInstanceSequence = [copy.deepcopy(image)]
        result.ReferencedSeriesSequence = [series]
    if "FrameOfReferenceUID" in ds and "FrameOfReferenceUID" not in result:
        result.FrameOfReferenceUID = ds.FrameOfReferenceUID


def _text_scale(text: str, width: int, thickness: int) -> float:
    """The cv2 font scale at which `text` spans at most 60 % of `width` (at least 0.25)."""
    base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)[0][0]
    return max(0.25, min(2.0, 0.6 * width / max(base, 1)))


def _put_text(rgb: np.ndarray, text: str, origin: tuple[int, int], scale: float, thickness: int) -> None:
    cv2.putText(rgb, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(rgb, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


OUT_OF_DOMAIN_MARK = "OUT OF DOMAIN - UNRELIABLE"


def burn_in(rgb: np.ndarray, colour_map: str = "jet", out_of_domain: bool = False) -> np.ndarray:
    """The overlay with a vertical colour bar (high at the top) at the right edge and the warning at the top (and
    the out-of-domain mark below it where the guard fired)."""
    rgb = np.ascontiguousarray(rgb.copy())
    rows, cols = rgb.shape[:2]
    thickness = max(1, round(cols / 512))
    bar_w = max(4, cols // 40)
    top, bottom = rows // 8, rows - rows // 8
    left = cols - bar_w - max(2, cols // 64)
    gradient = np.repeat(np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None], bar_w, axis=1)
    rgb[top:bottom, left:left + bar_w] = blend(np.zeros_like(gradient), gradient, opacity=1.0, colour_map=colour_map)
    cv2.rectangle(rgb, (left - 1, top - 1), (left + bar_w, bottom), (255, 255, 255), 1)
    small = _text_scale("high", cols // 4, thickness) * 0.6
    for label, y in (("high", top - 3), ("low", min(rows - 2, bottom + int(14 * small + 4)))):
        size = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, small, thickness)[0]
        _put_text(rgb, label, (max(0, left + bar_w - size[0]), max(size[1] + 1, y)), small, thickness)
    scale = _text_scale(NOT_FOR_DIAGNOSIS, cols, thickness)
    height = cv2.getTextSize(NOT_FOR_DIAGNOSIS, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1]
    _put_text(rgb, NOT_FOR_DIAGNOSIS, (max(2, cols // 64), height + max(3, rows // 64)), scale, thickness)
    if out_of_domain:
        _put_text(rgb, OUT_OF_DOMAIN_MARK, (max(2, cols // 64), 2 * height + 2 * max(3, rows // 64)), scale,
                  thickness)
    return rgb


def relevance_overlay(source: Dataset | bytes, relevance: np.ndarray, info: ResultInfo, *, opacity: float = 0.45,
                      colour_map: str = "jet", scale: str = "per map", unit_range: bool = False,
                      series_number: int = OVERLAY_SERIES_NUMBER) -> hd.sc.SCImage:
    """A Secondary Capture of the source with the relevance map (on the source grid) overlaid, colour bar and
    "NOT FOR DIAGNOSTIC USE" burned in, in a new series of the source study."""
    ds = source_dataset(source)
    relevance = _check_map(ds, relevance)
    rgb = burn_in(blend(_display_pixels(ds), display_scale(relevance, scale, unit_range), opacity, colour_map),
                  colour_map, out_of_domain=bool(info.out_of_domain))
    orientation = tuple(ds.get("PatientOrientation") or ()) or None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ds,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **new_instance(series_number),
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        patient_orientation=("L", "F"),  # highdicom needs two values; replaced by the source's (or empty) below
    )
    image.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else None  # Type 2C
    image.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} - XAI {info.method} {info.target} overlay"[:64]
    image.ImageComments = (f"{info.text()}. {NOT_FOR_DIAGNOSIS}: research display of a model explanation."
                           f"{info.warning()}")[:10240]
    image.BurnedInAnnotation = "YES"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.DerivationDescription = f"{info.text()}, min-max scaled, blended over the source image"[:1024]
    image.ManufacturerModelName = MODEL_NAME
    image.SoftwareVersions = SOFTWARE_VERSION
    _references(image, ds)
    return image


def region_segmentation(source: Dataset | bytes, relevance: np.ndarray, info: ResultInfo, *, percent: float = 10.0,
                        refined: np.ndarray | None = None,
                        series_number: int = SEGMENTATION_SERIES_NUMBER) -> hd.seg.Segmentation:
    """A binary Segmentation of the top `percent` % relevance region (segment 1) and, when given, the SegX-refined
    region (segment 2, a boolean mask on the source grid), in a new series of the source study."""
    if not 0.0 < percent <= 100.0:
        raise InputError(f"percent is {percent:g}; expected a share of the image in (0, 100].")
    ds = source_dataset(source)
    relevance = _check_map(ds, relevance)
    masks = [("top", f"top {percent:g}% {info.method} relevance", top_region(relevance, percent))]
    if refined is not None:
        refined = np.asarray(refined, bool)
        if refined.shape != relevance.shape:
            raise InputError(f"The refined region is {refined.shape[1]} x {refined.shape[0]} pixels; expected the "
                             f"source grid, {relevance.shape[1]} x {relevance.shape[0]}.")
        masks.append(("refined", f"SegX-refined {info.method} region", refined))
    algorithm = hd.AlgorithmIdentificationSequence(name=f"{info.model} {info.method}"[:64], version=SOFTWARE_VERSION,
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
            segmented_property_type=codes.DCM.ImageRegion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (_, label, _) in enumerate(masks, start=1)
    ]
    stacked = np.stack([mask for _, _, mask in masks], axis=-1).astype(np.uint8)[None]  # (1 frame, rows, cols, seg)
    seg = hd.seg.Segmentation(
        source_images=[ds],
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **new_instance(series_number),
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        series_description=f"{NOT_FOR_DIAGNOSIS} - XAI {info.method} {info.target} region"[:64],
        omit_empty_frames=False,
    )
    if info.out_of_domain:
        seg.ContentDescription = OUT_OF_DOMAIN_MARK[:64]
        seg.ImageComments = info.warning().strip()[:10240]
    _references(seg, ds)
    return seg


def results_for(source: Dataset | bytes, relevance: np.ndarray, info: ResultInfo, *, percent: float = 10.0,
                refined: np.ndarray | None = None) -> list[Dataset]:
    """Every result object for one explanation: the overlay Secondary Capture and the region Segmentation."""
    ds = source_dataset(source)
    return [relevance_overlay(ds, relevance, info), region_segmentation(ds, relevance, info, percent=percent,
                                                                       refined=refined)]


def to_bytes(ds: Dataset) -> bytes:
    """A result object as a DICOM file (Part 10)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_result(data: bytes) -> Dataset:
    """A result object back from its bytes (pydicom; highdicom's classes via `hd.seg.segread` etc.)."""
    return pydicom.dcmread(io.BytesIO(data))


def references_source(result: Dataset, ds: Dataset) -> bool:
    """Whether `result` references the source study, series, SOP instance and frame of reference of `ds`."""
    referenced: Sequence[Dataset] = result.get("ReferencedSeriesSequence") or []
    series_ok = any(item.SeriesInstanceUID == ds.SeriesInstanceUID and any(
        ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID for ref in item.ReferencedInstanceSequence)
        for item in referenced)
    frame_ok = "FrameOfReferenceUID" not in ds or result.get("FrameOfReferenceUID") == ds.FrameOfReferenceUID
    return bool(result.StudyInstanceUID == ds.StudyInstanceUID and series_ok and frame_ok
                and result.SeriesInstanceUID != ds.SeriesInstanceUID)
