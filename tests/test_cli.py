"""`python -m xai_core ...`: the command-line contract."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT
from xai_core.cli import main

MODEL = "xrv-densenet121-nih"


def test_predict_json_end_to_end(real_cxr):
    path = real_cxr / "dicom" / "cr_chest_monochrome1.dcm"
    result = subprocess.run(
        [sys.executable, "-m", "xai_core", "predict", str(path), "--model", MODEL, "--allow-random-weights",
         "--json", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == MODEL and data["random_weights"] is True
    assert len(data["sha256"]) == 64
    assert {"label", "probability", "threshold", "positive", "logit"} <= set(data["findings"][0])
    assert data["image"]["meta"]["photometric"] == "MONOCHROME1"
    assert "SYNTHETIC" not in result.stdout


def test_predict_table(real_cxr, capsys):
    code = main(["predict", str(real_cxr / "nih" / "00000001_000.png"), "--model", MODEL,
                 "--allow-random-weights", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "random weights" in out and "Cardiomegaly" in out and "probability" in out


def test_bad_file_exits_2_with_a_message_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["predict", str(bad), "--model", MODEL, "--allow-random-weights"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "DICOM" in err


def test_unknown_model_and_missing_weights_exit_2(real_cxr, tmp_path, capsys, monkeypatch):
    image = str(real_cxr / "nih" / "00000001_000.png")
    assert main(["predict", image, "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path))
    assert main(["predict", image, "--model", MODEL]) == 2
    assert "XAI_WEIGHTS_DIR" in capsys.readouterr().err


def test_models_lists_cards(capsys):
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert cards[MODEL]["input"] == {"channels": 1, "size": 224, "value_range": [-1024.0, 1024.0]}


def test_explain_writes_maps_overlays_and_json(tmp_path, capsys):
    import numpy as np

    sample = ROOT / "assets" / "samples" / "dicom" / "samples-0-000004.dcm"  # a Mass case
    code = main(["explain", str(sample), "--target", "Mass", "--methods", "gradcam,random", "--out",
                 str(tmp_path), "--json", "--device", "cpu"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "demo" and data["target"] == "Mass"
    assert set(data["methods"]) == {"gradcam", "random"}
    for method, entry in data["methods"].items():
        assert entry["seconds"] >= 0
        values = np.load(entry["map"])
        assert values.shape == (224, 224) and values.dtype == np.float32 and (values >= 0).all()
        assert (tmp_path / f"{method}_overlay.png").stat().st_size > 1000
    assert main(["explain", str(sample), "--target", "Mass", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
