"""PACS over DICOMweb (QIDO-RS / WADO-RS / STOW-RS) and explanation results as DICOM objects (highdicom)."""

from xai_core.dicomweb.client import (
    CHEST_MODALITIES,
    InstanceRef,
    PacsClient,
    PacsSettings,
    RetrievedImage,
    SeriesRef,
    StudyRef,
    dataset_from_bytes,
    prepare_for_pacs,
    redact_url,
    short_hash,
)

__all__ = [
    "CHEST_MODALITIES",
    "InstanceRef",
    "PacsClient",
    "PacsSettings",
    "RetrievedImage",
    "SeriesRef",
    "StudyRef",
    "dataset_from_bytes",
    "prepare_for_pacs",
    "redact_url",
    "short_hash",
]
