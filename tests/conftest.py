"""Shared fixtures: images the repository ships, the real sample folder (only for tests of real images), models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xai_core.samples import real_samples_dir

ROOT = Path(__file__).resolve().parents[1]
REAL_CXR = ROOT.parent / "shared" / "data" / "real-cxr"
SAMPLES = ROOT / "assets" / "samples"
# a per-image CSV of an evaluation: Effusion and Mass, two methods, SIC kept or dropped by a skip rule
PER_IMAGE = ("case_id,finding,method,seconds,deletion_auc,complexity,sic_auc,sic_skip\n"
             "a,Effusion,gradcam,0.1,0.9,5.0,nan,blurred_as_high\n"
             "a,Effusion,random,0.1,0.8,6.0,nan,blurred_as_high\n"
             "b,Effusion,gradcam,0.1,0.7,5.2,0.6,kept\n"
             "b,Effusion,random,0.1,nan,nan,nan,empty_map\n"
             "b,Mass,gradcam,0.1,0.2,4.0,0.8,kept\n"
             "b,Mass,random,0.1,0.6,6.2,0.5,kept\n"
             "c,Mass,gradcam,0.1,0.4,4.4,nan,low_score\n"
             "c,Mass,random,0.1,0.5,6.3,nan,low_score\n")


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
    """$XAI_REAL_SAMPLES_DIR, else ../shared/data/real-cxr; tests that need it skip only when neither is there."""
    folder = real_samples_dir()
    if folder is None:
        where = os.environ.get("XAI_REAL_SAMPLES_DIR", str(REAL_CXR))
        pytest.skip(f"real samples not available: {where} is not a folder (CI always has ../shared)")
    return folder


@pytest.fixture(scope="session")
def demo_nemt_decoder():
    """`demo`'s bundled NEMt decoder (assets/models/demo-nemt.pt), loaded once and sha256-checked."""
    from xai_core.models import load_model
    from xai_core.nemt import load_decoder

    return load_decoder(load_model("demo"))


@pytest.fixture(scope="session")
def flat_reads_effusion_check():
    """The runner's baseline self-check (removal "constant": a flat mid-grey image) of a toy model that reads any
    image without texture as Effusion and intact phantom cases as normal: its removal metrics are invalid for
    Effusion only. A function of the metrics evaluated."""
    from types import SimpleNamespace

    import torch

    from xai_core.evaluation.runner import baseline_self_check
    from xai_core.models import InputSpec
    from xai_core.phantom import FINDINGS

    class ReadsFlatAsEffusion(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((x.shape[0], len(FINDINGS)), -8.0)
            logits[:, FINDINGS.index("Effusion")] = 5.0 - x.std(dim=(1, 2, 3)) / 10
            return logits

    card = SimpleNamespace(name="toy", labels=list(FINDINGS), thresholds=dict.fromkeys(FINDINGS, 0.5),
                           input=InputSpec(1, 64, (-1024.0, 1024.0)))
    handle = SimpleNamespace(card=card, module=ReadsFlatAsEffusion(), device=torch.device("cpu"))
    return lambda metrics: baseline_self_check(handle, "constant", 4, metrics)
