"""Training plumbing: resumable checkpoints, operating points, the manifest record."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from xai_core.errors import InputError
from xai_core.mammi.match import BASE_PROMPT, CONCEPT_PROMPT, HELD_OUT_PROMPTS
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


def test_clip_training_texts_are_report_text_and_contain_no_mammi_or_held_out_prompt():
    from xai_core.phantom import generate_case
    from xai_core.training.clip import FORBIDDEN_PROMPTS, prompt_leaks, report_sentences

    texts, kinds = [], set()
    for i in range(300):
        case = generate_case("train", i, size=64)
        text = training_text(case.report, case.case_id)
        assert text == training_text(case.report, case.case_id), "seeded by the case: resumed runs see the same"
        sentences = report_sentences(case.report)
        if text.startswith("IMPRESSION:"):
            kinds.add("whole")
            assert set(report_sentences(text)) == set(sentences)
        else:
            assert set(report_sentences(text)) <= set(sentences), "only sentences of the case's own report"
            kinds.add("one" if len(report_sentences(text)) == 1 else "some")
        texts.append(text)
    assert kinds == {"whole", "some", "one"}
    assert prompt_leaks(texts) == [], "no training text contains a MAMMI prompt or a held-out paraphrase"
    assert prompt_leaks([r for r in (generate_case("val", i, size=64).report for i in range(300))]) == []
    assert not any("chest x-ray image" in t.lower() or "radiograph showing" in t.lower() for t in texts)
    assert set(FORBIDDEN_PROMPTS) >= {CONCEPT_PROMPT, BASE_PROMPT, *HELD_OUT_PROMPTS}


def test_every_prompt_template_of_mammi_is_forbidden_in_training_texts():
    import xai_core.mammi.match as match
    from xai_core.training.clip import FORBIDDEN_PROMPTS

    constants = [v for name, v in vars(match).items() if name.isupper()]
    templates = [t for v in constants for t in (v if isinstance(v, tuple) else (v,))
                 if isinstance(t, str) and ("{}" in t or t == match.BASE_PROMPT)]
    assert len(templates) >= 3 and set(templates) <= set(FORBIDDEN_PROMPTS), "a new template must be held out too"


def test_the_prompt_check_finds_templates_in_any_case_and_spacing():
    from xai_core.training.clip import check_training_texts, prompt_leaks

    report = "FINDINGS: There is a 12 mm nodule in the right midlung. IMPRESSION: Right lung nodule, 12 mm."
    check_training_texts([report])
    for leaked in (CONCEPT_PROMPT.format("pleural effusion"), "a CHEST x-ray   image of a nodule",
                   "IMPRESSION: a radiograph showing cardiomegaly.", "chest film with mass"):
        with pytest.raises(ValueError, match="held-out prompt"):
            check_training_texts([report, leaked])
    assert [template for _, template in prompt_leaks(["Chest film with mass"])] == [HELD_OUT_PROMPTS[1]]


def test_clip_targets_match_texts_and_images_by_findings_and_sides():
    keys = ["Nodule:right", "", "Cardiomegaly:central|Nodule:right", "", "Nodule:right"]
    to_text, to_image = contrastive_targets(keys)
    expected = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]],
                            dtype=torch.float32)
    assert torch.allclose(to_text, expected / expected.sum(1, keepdim=True))
    assert torch.allclose(to_image, expected.T / expected.T.sum(1, keepdim=True))


def test_clip_training_chooses_prompts_on_val_and_records_them(tmp_path, monkeypatch):
    from xai_core.models.vlm import PROMPT_FAMILIES
    from xai_core.training.clip import TEXT_SOURCES, ClipRecipe, train_clip

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
    assert "concept_prompts" not in record["recipe"], "report text only"
    assert record["recipe"]["text_sources"] == record["data"]["train"]["text_sources"] == list(TEXT_SOURCES)
    assert record["data"]["train"]["text"] == "report views only"
    assert record["recipe"]["hard_negatives"] and "contradiction" in record["data"]["train"]["hard_negatives"]
    assert CONCEPT_PROMPT in record["data"]["train"]["held_out_prompts"]


def test_a_hard_negative_enters_only_its_own_films_softmax():
    from xai_core.training.clip import contrastive_loss

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    false_words = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    keys, scale = ["", "Nodule:right", "", "Mass:left"], torch.tensor(10.0)
    to_text, to_image = contrastive_targets(keys)
    logits = scale * image @ words.T
    plain = (torch.nn.functional.cross_entropy(logits, to_text)
             + torch.nn.functional.cross_entropy(logits.T, to_image)) / 2
    assert torch.allclose(contrastive_loss(image, words, keys, scale), plain)
    own = torch.cat([logits, scale * (image * false_words).sum(-1, keepdim=True)], dim=1)
    expected = (-(to_text * own.log_softmax(1)[:, :4]).sum(1).mean()
                + torch.nn.functional.cross_entropy(logits.T, to_image)) / 2
    with_false = contrastive_loss(image, words, keys, scale, false_words)
    assert torch.allclose(with_false, expected) and with_false > plain
    far = contrastive_loss(image, words, keys, scale, -image)  # a false sentence opposite its film costs little
    near = contrastive_loss(image, words, keys, scale, image)  # one that reads like its film costs most
    assert plain < far < near


def test_hard_negatives_are_report_text_false_for_the_case_and_seeded_by_it():
    from xai_core.phantom import generate_case
    from xai_core.training.clip import hard_negative, key_labels, prompt_leaks

    assert key_labels("Cardiomegaly:central|Nodule:right") == ["Cardiomegaly", "Nodule"] and key_labels("") == []
    texts = []
    for i in range(100):
        case = generate_case("train", i, size=64)
        key = common.encode_case(case, with_report=True)["finding_key"]
        text = hard_negative(key, case.case_id)
        assert text == hard_negative(key, case.case_id), "seeded by the case: resumed runs see the same"
        texts.append(text)
    assert prompt_leaks(texts) == [] and len(set(texts)) > 50


def test_the_modifiers_of_findings_are_left_out_of_some_training_texts_and_nothing_else_is():
    from xai_core.phantom import generate_case
    from xai_core.phantom.text import MODIFIERS, without_modifiers
    from xai_core.training.clip import report_view

    assert without_modifiers("IMPRESSION: Large left pleural effusion. FINDINGS: A small right-sided pneumothorax. "
                             "Dense consolidation in the right upper lung zone. The heart is markedly enlarged. "
                             "No pleural effusion.") == \
        "IMPRESSION: Pleural effusion. FINDINGS: A pneumothorax. Consolidation. The heart is enlarged. " \
        "No pleural effusion."
    dropped, qualified = 0, 0
    for i in range(300):
        case = generate_case("train", i, size=64)
        view, text = report_view(case.report, case.case_id), training_text(case.report, case.case_id, 0.3)
        assert training_text(case.report, case.case_id) == view, "no dropping by default"
        qualified += bool(MODIFIERS.search(view))
        if text != view:
            dropped += 1
            assert text == without_modifiers(view) and not MODIFIERS.search(text)
            words = re.findall(r"[a-z0-9-]+", text.lower())
            assert set(words) < set(re.findall(r"[a-z0-9-]+", view.lower())), "words are only left out"
            assert not re.search(r"(?i)\bthe (?:with|,|\.)|\ba amount\b|projects,|with a (?:margin|contour)", text)
    assert 0.2 < dropped / qualified < 0.4, (dropped, qualified)


def test_a_text_without_its_modifiers_matches_the_films_with_its_findings_on_either_side():
    keys = ["Effusion:left", "Effusion:right", "", "Effusion:left|Nodule:right"]
    to_text, _ = contrastive_targets(keys)
    assert to_text[1, 0] == 0, "by default a left effusion's text is no match for a right effusion's film"
    to_text, to_image = contrastive_targets(keys, sideless=[True, False, False, False])
    match = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(to_text, match / match.sum(1, keepdim=True))
    assert torch.allclose(to_image, match.T / match.T.sum(1, keepdim=True))


def test_clip_training_continues_from_bundled_weights_and_records_them(tmp_path, monkeypatch):
    import shutil

    from xai_core.training.clip import ClipRecipe, train_clip

    manifest = json.loads(bundled.MANIFEST.read_text())
    shutil.copy(bundled.MANIFEST, tmp_path / "manifest.json")
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    recipe = ClipRecipe(name="toy-clip", init="demo-clip", steps=1, batch=4, test_n=8, lr=0.0)
    record = train_clip(recipe, device="cpu", checkpoint_dir=tmp_path, progress=False, out_dir=tmp_path)
    assert record["init"]["model"] == "demo-clip"
    assert record["init"]["sha256"] == manifest["models"]["demo-clip"]["sha256"]
    assert record["init"]["command"] == manifest["models"]["demo-clip"]["command"]
    assert record["init"]["init"] == manifest["models"]["demo-clip"].get("init"), "the chain of starting weights"
    start = torch.load(bundled.MODELS_DIR / "demo-clip.pt", weights_only=True)
    after = torch.load(tmp_path / "toy-clip.pt", weights_only=True)
    learnt = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(start[k], after[k]) for k in learnt), "at learning rate 0 the weights are the bundled ones"
    counters = [k for k in start if k.endswith("num_batches_tracked")]
    assert counters and all(after[k] == start[k] + 1 for k in counters), "BatchNorm state continues too (one step)"
    assert record["data"]["test"]["seed"] == record["data"]["val"]["seed"] == 0, "scored on the usual films"


def test_clip_training_refuses_to_continue_from_a_classifier():
    from xai_core.training.clip import ClipRecipe, initial_weights

    with pytest.raises(InputError, match="not an image-text model"):
        initial_weights(ClipRecipe(init="demo"))


@pytest.mark.parametrize("argv", [["train", "classifier", "--init", "demo-clip"],
                                  ["train", "segmenter", "--drop-modifiers", "0.5"],
                                  ["train", "nemt", "--lr", "0.1"],
                                  ["train", "clip", "--drop-modifiers", "1.5"],
                                  ["train", "clip", "--init", "demo"]])
def test_train_refuses_clip_options_it_cannot_use_with_an_error_line(argv, capsys):
    from xai_core.cli import main

    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
