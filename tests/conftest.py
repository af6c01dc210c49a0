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
    """`demo` has no bundled NEMt module yet (the trained one misses its localisation bar, so it is not shipped):
    tests of NEMt's mechanics register a seeded, untrained decoder for `demo` on the CPU."""
    import torch

    from xai_core.models import load_model
    from xai_core.nemt import NEMtDecoder, register_decoder, tap_channels
    from xai_core.nemt import input_scale as decoder_input_scale

    handle = load_model("demo")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = NEMtDecoder(tap_channels(handle.module, 1), len(handle.card.labels), 1,
                              input_scale=decoder_input_scale(handle))
    register_decoder(handle, decoder)
    return decoder
