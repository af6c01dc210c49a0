"""Shared fixtures: the real sample folder and small engines."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = ROOT.parent / "shared" / "data" / "real-cxr"


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
