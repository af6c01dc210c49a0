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
