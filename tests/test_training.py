"""Training plumbing: resumable checkpoints, operating points, the manifest record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xai_core.models import bundled
from xai_core.training import common
from xai_core.training.clip import contrastive_targets, impression_first, training_text


class Interrupted(Exception):
    pass


def _train(tmp_path, interrupt_after: int | None = None, recipe: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, 1, gamma=0.9)
    data = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def loader_from(step: int):
        for i in range(step, 4):
            if interrupt_after is not None and i == interrupt_after:
                raise Interrupted
            yield data[i]

    common.run_training("toy", model, optimiser, schedule, loader_from, lambda x: model(x).pow(2).mean(), 4,
                        recipe or {"toy": 1}, tmp_path, progress=False, every=1)
    return model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    uninterrupted = _train(tmp_path / "a")
    with pytest.raises(Interrupted):
        _train(tmp_path / "b", interrupt_after=2)
    assert common.Checkpoint(tmp_path / "b" / "toy.ckpt").load()["step"] == 2
    resumed = _train(tmp_path / "b")
    for p, q in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    other = _train(tmp_path / "b", recipe={"toy": 2})  # another recipe: starts afresh, ignores the checkpoint
    assert common.Checkpoint(tmp_path / "b" / "toy.ckpt").load()["recipe"] == {"toy": 2}
    assert other is not None


def test_max_f1_thresholds_separate_a_clean_label():
    y = np.array([[0], [0], [1], [1]], dtype=np.float32)
    p = np.array([[0.1], [0.3], [0.6], [0.9]])
    threshold = common.max_f1_thresholds(y, p, ["A"])["A"]
    assert 0.3 < threshold <= 0.6


def test_record_model_writes_sha_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    record = common.record_model("toy", weights, {"metrics": {"x": 1}})
    stored = json.loads((tmp_path / "manifest.json").read_text())["models"]["toy"]
    assert stored["sha256"] == record["sha256"] and len(stored["sha256"]) == 64
    assert stored["command"].startswith("python -m xai_core") and stored["metrics"] == {"x": 1}


def test_clip_text_puts_the_impression_first():
    text = impression_first("FINDINGS: No pneumothorax. Small left effusion. IMPRESSION: Left pleural effusion.")
    assert text.startswith("IMPRESSION: Left pleural effusion.") and "No pneumothorax." in text


def test_clip_concept_prompts_name_a_present_finding_and_only_with_findings():
    from xai_core.mammi.match import CONCEPT_PROMPT

    report = "FINDINGS: There is a 12 mm nodule. IMPRESSION: Cardiomegaly. Right lung nodule."
    allowed = {CONCEPT_PROMPT.format(t) for t in ("nodule", "pulmonary nodule", "cardiomegaly")}
    texts = [training_text(report, f"case-{i}", ["Cardiomegaly", "Nodule"], 1.0) for i in range(40)]
    assert {text for text, _ in texts} <= allowed
    assert {finding for _, finding in texts} == {"Cardiomegaly", "Nodule"}
    assert all((finding == "Nodule") == ("nodule" in text) for text, finding in texts)
    assert training_text(report, "case-0", ["Nodule"], 1.0) == training_text(report, "case-0", ["Nodule"], 1.0)
    normal = "FINDINGS: Clear lungs. IMPRESSION: No acute cardiopulmonary abnormality."
    assert all(training_text(normal, f"n-{i}", [], 1.0)[1] is None for i in range(10))
    assert all(training_text(report, f"r-{i}", ["Nodule"], 0.0)[1] is None for i in range(10))


def test_clip_targets_match_prompts_to_every_image_with_the_finding():
    reports = ["IMPRESSION: Right lung nodule.", "IMPRESSION: No acute cardiopulmonary abnormality.",
               "IMPRESSION: Cardiomegaly. Right lung nodule.", "IMPRESSION: No acute cardiopulmonary abnormality."]
    present = [["Nodule"], [], ["Cardiomegaly", "Nodule"], []]
    to_text, to_image = contrastive_targets(reports, present, ["Nodule", None, None, None])
    # text 0 names Nodule: images 0 and 2 match it; the two normal reports match each other
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.float32)
    assert torch.allclose(to_text, expected / expected.sum(1, keepdim=True))
    assert torch.allclose(to_image, expected.T / expected.T.sum(1, keepdim=True))


def test_clip_training_chooses_prompts_on_val_and_records_them(tmp_path, monkeypatch):
    from xai_core.models.vlm import PROMPT_FAMILIES
    from xai_core.training.clip import ClipRecipe, train_clip

    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    record = train_clip(ClipRecipe(name="toy-clip", steps=2, batch=8, test_n=24), device="cpu",
                        checkpoint_dir=tmp_path, progress=False, out_dir=tmp_path)
    prompts = record["prompts"]
    assert set(prompts["val_macro_auroc"]) == {*PROMPT_FAMILIES, "ensemble"}
    best = max(prompts["val_macro_auroc"], key=prompts["val_macro_auroc"].get)
    assert prompts["families"] == (list(PROMPT_FAMILIES) if best == "ensemble" else [best])
    assert record["data"]["val"]["use"] == "prompt choice"
    assert set(record["metrics"]["zero_shot_test_auroc"]) == set(record["labels"])
    assert (tmp_path / "toy-clip.pt").is_file()
