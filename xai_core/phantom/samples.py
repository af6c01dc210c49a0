"""The bundled sample cases (assets/samples): every finding alone, a few combinations, normals."""

from __future__ import annotations

from pathlib import Path

from xai_core.phantom.writers import write_split

SAMPLE_FINDINGS: list[list[str]] = [
    ["Atelectasis"], ["Cardiomegaly"], ["Consolidation"], ["Effusion"], ["Mass"], ["Nodule"], ["Pneumothorax"],
    ["Cardiomegaly", "Effusion"], ["Consolidation", "Nodule"], ["Mass", "Pneumothorax"], [], [],
]


def write_samples(out: str | Path) -> Path:
    """Write the dozen sample cases (PNG, DICOM, masks, anatomy, reports, fixations) to `out`."""
    return write_split(out, "samples", len(SAMPLE_FINDINGS), size=256, workers=1, findings=SAMPLE_FINDINGS,
                       progress=False)
