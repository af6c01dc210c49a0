"""Shared fixtures: images the repository ships, the real sample folder (only for tests of real images), models."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = ROOT.parent / "shared" / "data" / "real-cxr"
SAMPLES = ROOT / "assets" / "samples"


@pytest.fixture(scope="session")
def sample_png() -> Path:
    """A bundled phantom radiograph as an 8-bit PNG (any clone has it)."""
    return SAMPLES / "images" / "samples-0-000001.png"


@pytest.fixture(scope="session")
def sample_dicom() -> Path:
    """A bundled phantom radiograph as a DICOM file (any clone has it)."""
    return SAMPLES / "dicom" / "samples-0-000003.dcm"


@pytest.fixture
def monochrome1_dicom(tmp_path) -> Path:
    """A MONOCHROME1 DICOM written by the test factory (white = low values, as many CR systems store it)."""
    import numpy as np

    from tests.dicom_factory import make_dataset, to_bytes

    rows = np.linspace(0, 4095, 96, dtype=np.float32)[:, None]
    pixels = np.broadcast_to(4095 - rows, (96, 80)).astype(np.uint16)
    path = tmp_path / "mono1.dcm"
    path.write_bytes(to_bytes(make_dataset(pixels, photometric="MONOCHROME1")))
    return path


@pytest.fixture(scope="session")
def real_cxr() -> Path:
    """../shared/data/real-cxr; tests that need it skip only when the shared folder is absent."""
    if not REAL_CXR.is_dir():
        pytest.skip(f"real samples not available: {REAL_CXR} is absent (CI always has ../shared)")
    return REAL_CXR


@pytest.fixture(scope="session")
def demo_nemt_decoder():
    """`demo`'s bundled NEMt decoder (assets/models/demo-nemt.pt), loaded once and sha256-checked."""
    from xai_core.models import load_model
    from xai_core.nemt import load_decoder

    return load_decoder(load_model("demo"))
