"""benchmarks/gpu.py, the prepared CUDA run, keeps working: every code path on CPU with tiny settings."""

from __future__ import annotations

import json

from benchmarks import gpu


def test_the_gpu_benchmark_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--models", "demo", "--methods", "gradcam,nemt",
                     "--evaluate-methods", "gradcam,random", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"] is True
    assert [row["batch"] for row in result["predict"]] == [1, 2]
    assert all(row["images_per_s"] > 0 for row in result["predict"] + result["explainers"])
    assert {row["method"] for row in result["explainers"]} == {"gradcam", "nemt"}
    assert result["nemt"][0]["forward_s"] > 0 and result["nemt"][0]["nemt_s"] > 0
    assert result["evaluate"]["cases"] == 4 and 0 <= result["evaluate"]["relevance_mass"]["gradcam"] <= 1


def test_without_cuda_it_says_so(capsys, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
