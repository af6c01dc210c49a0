"""Sample cases for the dashboard's picker: bundled phantom cases and any real samples found on this machine."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_SAMPLES = ROOT / "assets" / "samples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class Sample:
    """One pickable case: where its file is and what is known about it."""

    name: str
    path: Path
    source: str
    labels: list[str] | None = None  # None: unknown; []: No Finding
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def title(self) -> str:
        if self.labels is None:
            return f"{self.name} ({self.source}: labels unknown)"
        return f"{self.name} ({self.source}: {', '.join(self.labels) or 'No Finding'})"


def real_samples_dir() -> Path | None:
    """$XAI_REAL_SAMPLES_DIR, else ../shared/data/real-cxr next to the project, if it exists."""
    candidate = Path(os.environ.get("XAI_REAL_SAMPLES_DIR", ROOT.parent / "shared" / "data" / "real-cxr"))
    return candidate if candidate.is_dir() else None


def _read_labels(path: Path, image_column: str, labels_column: str) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = csv.DictReader(handle)
        return {
            row[image_column]: [x for x in row[labels_column].split("|") if x and x != "No Finding"] for row in rows
        }


def bundled_samples(folder: Path = BUNDLED_SAMPLES) -> list[Sample]:
    """Phantom cases shipped in assets/samples (labels.csv + images/ + masks/)."""
    labels = _read_labels(folder / "labels.csv", "image", "labels")
    samples = []
    for image_id, findings in labels.items():
        image = folder / "images" / f"{image_id}.png"
        if not image.is_file():
            continue
        masks = {f: folder / "masks" / f"{image_id}_{f}.png" for f in findings}
        samples.append(Sample(image_id, image, "phantom", findings, {k: v for k, v in masks.items() if v.is_file()}))
    return samples


def real_samples() -> list[Sample]:
    """Real public radiographs (NIH PNGs with labels, DICOMs, other images) when the shared folder is present."""
    folder = real_samples_dir()
    if folder is None:
        return []
    nih_labels = _read_labels(folder / "nih" / "labels.csv", "image", "finding_labels")
    samples = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or "_mask" in path.stem:
            continue
        labels = nih_labels.get(path.name)
        source = "NIH ChestX-ray14" if path.name in nih_labels else f"real ({path.parent.name})"
        samples.append(Sample(path.stem, path, source, labels))
    return samples


def all_samples() -> list[Sample]:
    """Bundled phantom cases first, then real samples."""
    return bundled_samples() + real_samples()
