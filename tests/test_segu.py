"""SegU: the paper's scores on hand-made maps and masks, the per-finding calibration (reproducible, with its pooled
fallback), the calibration files, the lesion region and a tiny end-to-end train of the lesion segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xai_core import certainty
from xai_core.errors import InputError, MissingWeightsError, ModelError
from xai_core.models import bundled
from xai_core.segx import CalibrationError, region_for, segu, shortcut_figures


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """A 10 x 10 map: five pixels of 1.0 on a 10-pixel region, one of 0.505 outside it, zero elsewhere."""
    relevance = np.zeros((10, 10))
    relevance[0, 0:5] = 1.0
    relevance[9, 9] = 0.505
    region = np.zeros((10, 10), bool)
    region[0:2, 0:5] = True
    return relevance, region


def test_paper_scores_on_a_hand_made_map():
    relevance, region = hand_made()
    scores = segu(relevance, region, percent=5)  # the top 5 pixels: the five 1.0s, all inside
    assert scores["ciou"] == pytest.approx(5 / 10)
    assert scores["inside_mass"] == pytest.approx(5 / 5.505)
    # IoU(a_norm >= t): t = 0 every pixel (10/100); t in (0, 0.505] six pixels (5/11); above, the five (5/10)
    curve = np.array([0.1] + [5 / 11] * 50 + [0.5] * 50)
    assert scores["cauitc"] == pytest.approx(float(np.trapezoid(curve, np.linspace(0, 1, 101))))
    assert scores["cauitc"] == pytest.approx(0.01 * ((0.1 + 5 / 11) / 2 + 49 * 5 / 11 + (5 / 11 + 0.5) / 2 + 49 * 0.5))


def test_empty_region_scores_zero_and_a_flat_map_is_undefined():
    relevance, region = hand_made()
    assert segu(relevance, np.zeros_like(region)) == {"ciou": 0.0, "cauitc": 0.0, "inside_mass": 0.0}
    flat = segu(np.full((10, 10), 0.3), region)
    assert all(np.isnan(v) for v in flat.values())
    signed = relevance.copy()
    signed[9, 9] = -1.0  # negative relevance outside: ranks last, adds no mass
    assert segu(signed, region)["inside_mass"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        segu(relevance, region[:5])


def test_the_lesion_segmenter_gives_every_finding_the_same_lesion_region():
    lesion = np.zeros((8, 8), bool)
    lesion[2:4, 2:4] = True
    for label in ("Nodule", "Cardiomegaly", "Hernia"):
        region = region_for(label, "demo-lesion", {"lesion": lesion})
        assert region.kind == "lesion" and region.structures == ("lesion",) and not region.fallback
        assert (region.mask == lesion).all()
    assert region_for("Nodule", "demo-anatomy", {"right_lung": lesion, "left_lung": lesion}).kind == "anatomy"
    with pytest.raises(ModelError, match="no 'lesion' mask"):
        region_for("Nodule", "demo-lesion", {"heart": lesion})


def labelled_scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mass: 40 true and 20 false positives, true ones look at the lesion; Nodule: 20 true, 3 false."""
    rng = np.random.default_rng(seed)
    rows, correct, labels = [], [], []
    for label, n_true, n_false in (("Mass", 40, 20), ("Nodule", 20, 3)):
        for right, n in ((True, n_true), (False, n_false)):
            centre = 0.6 if right else 0.2
            rows.append(np.clip(rng.normal(centre, 0.1, (n, 3)), 0, 1))
            correct += [right] * n
            labels += [label] * n
    return np.concatenate(rows), np.array(correct), labels


def test_per_finding_calibration_with_a_pooled_fallback_for_too_few_false_positives():
    scores, correct, labels = labelled_scores()
    calibration = certainty.fit_calibration(scores, correct, labels)
    mass, nodule = calibration["per_label"]["Mass"], calibration["per_label"]["Nodule"]
    assert mass["source"] == "own" and (mass["n_true"], mass["n_false"]) == (40, 20)
    assert nodule["source"] == "pooled" and (nodule["n_true"], nodule["n_false"]) == (20, 3)
    assert calibration["fallback_labels"] == ["Nodule"]
    calibration["data"] = "phantom:val"
    note = certainty.fallback_note(calibration, "Nodule")
    assert "3 false" in note and "pooled" in note and certainty.fallback_note(calibration, "Mass") == ""
    assert "no positive findings" in certainty.fallback_note(calibration, "Effusion")

    p = certainty.certainties(calibration, labels, scores)
    assert ((p > 0) & (p < 1)).all()
    mass_rows = np.array(labels) == "Mass"
    assert p[mass_rows & correct].mean() > 0.8 and p[mass_rows & ~correct].mean() < 0.3
    # Nodule and a finding never seen on val both use the pooled model; Nodule with its own offset on the logit
    row = scores[-1:]
    pooled = certainty.certainties(calibration, ["Effusion"], row)[0]
    offsets = calibration["pooled"]["label_offsets"]
    assert set(offsets) == {"Mass", "Nodule"} and "Effusion" not in offsets
    nodule_logit = np.log(pooled / (1 - pooled)) + offsets["Nodule"]
    assert certainty.certainties(calibration, ["Nodule"], row)[0] == pytest.approx(1 / (1 + np.exp(-nodule_logit)))

    good = dict(zip(("ciou", "cauitc", "inside_mass"), [0.7, 0.7, 0.7], strict=True))
    bad = dict(zip(("ciou", "cauitc", "inside_mass"), [0.1, 0.1, 0.1], strict=True))
    trusted = certainty.calibrated_certainty(calibration, "Mass", good)
    assert trusted["verdict"] == "trust" and trusted["calibration_source"] == "own" and trusted["calibrated"]
    assert trusted["certainty"] >= trusted["threshold"] == mass["threshold"]
    doubted = certainty.calibrated_certainty(calibration, "Nodule", bad)
    assert doubted["verdict"] == "doubt" and doubted["calibration_source"] == "pooled"
    assert "pooled" in doubted["calibration_note"]
    undefined = certainty.calibrated_certainty(calibration, "Mass", dict.fromkeys(good, float("nan")))
    assert np.isnan(undefined["certainty"]) and "verdict" not in undefined
    none = certainty.calibrated_certainty(None, "Mass", good, "no calibration here")
    assert not none["calibrated"] and np.isnan(none["certainty"]) and none["calibration_note"] == "no calibration here"

    with pytest.raises(CalibrationError, match="both true and false positives"):
        certainty.fit_calibration(scores, np.ones(len(scores), bool), labels)


def test_calibration_is_reproducible_to_the_byte(tmp_path):
    def made(path):
        scores, correct, labels = labelled_scores(seed=3)
        calibration = certainty.fit_calibration(scores, correct, labels)
        figures = {"table4": certainty.paper_table(scores, correct),
                   "scores": certainty.score_aurocs(scores, correct, seed=3, n_boot=200)}
        record = certainty.calibration_record(calibration, data="phantom:val", seed=3, n_cases=60, percent=5.0,
                                              model_weights="abc", segmenter_weights="def", figures=figures,
                                              command="python -m xai_core segu --calibrate")
        return certainty.store_calibration("demo", "gradcam", "demo-lesion", record, path=path)

    first, second = made(tmp_path / "a.json"), made(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()
    made(first)  # writing the same calibration again leaves the file as it was
    assert first.read_bytes() == second.read_bytes()
    stored = json.loads(first.read_text())
    entry = stored["models"]["demo"]["gradcam"]["demo-lesion"]
    assert stored["version"] == certainty.FORMAT_VERSION
    assert {"data", "seed", "n_cases", "figures", "per_label", "pooled", "model_weights", "command"} <= set(entry)
    assert entry["data"] == "phantom:val" and entry["seed"] == 3


def test_paper_table_and_score_aurocs_on_known_values():
    scores = np.array([[0.2, 0.4, 0.6], [0.4, 0.6, 0.8], [0.0, 0.1, 0.2], [np.nan, np.nan, np.nan]])
    correct = np.array([True, True, False, False])
    table = certainty.paper_table(scores, correct)
    assert table["correct"] == pytest.approx({"n": 2, "ciou": 0.3, "cauitc": 0.5, "inside_mass": 0.7})
    assert table["incorrect"] == pytest.approx({"n": 2, "ciou": 0.0, "cauitc": 0.1, "inside_mass": 0.2})
    aurocs = certainty.score_aurocs(scores, correct, n_boot=100)
    assert {name: value["auroc"] for name, value in aurocs.items()} == {"ciou": 1.0, "cauitc": 1.0,
                                                                          "inside_mass": 1.0}


def test_calibrations_are_read_from_the_data_dir_first_then_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "models")
    scores, correct, labels = labelled_scores()
    calibration = certainty.fit_calibration(scores, correct, labels)

    def record(weights: str) -> dict:
        return certainty.calibration_record(calibration, data="phantom:val", seed=0, n_cases=60, percent=5.0,
                                            model_weights=weights, segmenter_weights="seg", figures={},
                                            command="segu")

    found, note = certainty.find_calibration("demo", "gradcam", "demo-lesion")
    assert found is None and "no SegU calibration" in note and "segu --model demo --method gradcam" in note
    shipped = certainty.store_calibration("demo", "gradcam", "demo-lesion", record("new"), shipped=True)
    assert shipped == tmp_path / "models" / "segu-calibrations.json"
    local = certainty.store_calibration("demo", "gradcam", "demo-lesion", record("old"))
    assert local == tmp_path / "data" / "segu-calibrations.json"
    found, _ = certainty.find_calibration("demo", "gradcam", "demo-lesion")
    assert found["file"] == str(local), "the data directory's calibration comes first"
    found, _ = certainty.find_calibration("demo", "gradcam", "demo-lesion", model_weights="new",
                                          segmenter_weights="seg")
    assert found["file"] == str(shipped), "one made for other weights is skipped"
    found, note = certainty.find_calibration("demo", "gradcam", "demo-lesion", model_weights="other")
    assert found is None and "other weights" in note
    assert certainty.find_calibration("demo", "gradcam", "demo-anatomy")[0] is None, "kept per segmenter"


def test_lesion_targets_are_the_union_of_every_findings_mask():
    from xai_core.phantom import FINDINGS, generate_case
    from xai_core.training.common import encode_case
    from xai_core.training.segmenter import add_lesion_targets

    case = generate_case("train", 5, size=64, findings=["Mass", "Nodule", "Effusion"])
    item = add_lesion_targets(case, encode_case(case), "train", 5, parts=True)
    union = np.zeros((64, 64), bool)
    for name, mask in case.lesions.items():
        union |= mask
        assert (item["lesion_parts"][FINDINGS.index(name)].numpy() == mask).all()
    assert item["lesion"].shape == (1, 64, 64) and (item["lesion"][0].numpy() == union).all() and union.any()
    assert not item["lesion_parts"][FINDINGS.index("Pneumothorax")].any()


def test_lesion_dice_per_finding_with_nodules_apart():
    from xai_core.phantom import FINDINGS
    from xai_core.training.segmenter import lesion_dice, summarise_lesion_dice

    parts = torch.zeros(2, len(FINDINGS), 10, 10, dtype=torch.bool)
    mass, nodule = FINDINGS.index("Mass"), FINDINGS.index("Nodule")
    parts[0, mass, 0:4, 0:4] = True  # 16 px
    parts[0, nodule, 8:10, 8:10] = True  # 4 px
    predicted = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    predicted[0, 0, 0:4, 0:4] = True  # the mass exactly, the nodule missed
    predicted[0, 0, 8, 8] = True  # one nodule pixel
    predicted[1, 0, 5, 5] = True  # a lesion-free case with one false pixel
    values = lesion_dice(predicted, parts)
    assert values["Mass"] == [1.0] and values["Nodule"] == pytest.approx([2 * 1 / (1 + 4)])
    assert values["overall"] == pytest.approx([2 * 17 / (17 + 20)]) and values["false_pixels"] == [1.0]
    summary = summarise_lesion_dice(values)
    assert summary["larger_than_nodule"] == 1.0 and summary["nodule"] == pytest.approx(0.4)
    assert summary["per_finding"]["Mass"] == {"dice": 1.0, "n": 1} and summary["n_larger_than_nodule"] == 1
    assert summary["lesion_free_cases"] == {"n": 1, "clean_share": 0.0, "mean_false_pixels": 1.0}
    assert np.isnan(summary["per_finding"]["Effusion"]["dice"])


def test_a_tiny_lesion_segmenter_trains_records_and_becomes_the_segu_region(tmp_path, monkeypatch):
    from xai_core.models import load_model
    from xai_core.models.segmenters import load_unet, segment, segmenter_card
    from xai_core.training.segmenter import SegmenterRecipe, train_segmenter

    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path)
    with pytest.raises(MissingWeightsError, match="train segmenter --name demo-lesion"):
        load_model("demo-lesion")
    assert certainty.default_segmenter("demo") == "demo-anatomy", "anatomy until demo-lesion's weights exist"

    recipe = SegmenterRecipe.for_target("lesion", steps=2, batch=2, test_n=4, size=64, shortcut=0.0)
    assert recipe.name == "demo-lesion" and recipe.labels == ["lesion"]
    record = train_segmenter(recipe, device="cpu", checkpoint_dir=tmp_path, progress=False, out_dir=tmp_path)
    stored = json.loads((tmp_path / "manifest.json").read_text())["models"]["demo-lesion"]
    assert stored["sha256"] == record["sha256"] and stored["labels"] == ["lesion"] and stored["target"] == "lesion"
    dice = stored["metrics"]["test_dice"]
    assert {"overall", "per_finding", "nodule", "larger_than_nodule", "lesion_free_cases"} <= set(dice)
    assert set(dice["per_finding"]) >= {"Nodule", "Mass", "Effusion"}
    # trained on the tag world (faded pneumothoraces); measured on it and on the tag-free world the bar uses
    assert stored["data"]["train"]["shortcut"] == 0.0 and dice["tag_world_shortcut"] == 0.0
    assert set(dice["tag_world"]) == set(dice) - {"tag_world", "tag_world_shortcut"}
    assert (tmp_path / "demo-lesion.pt").is_file()

    assert certainty.default_segmenter("demo") == "demo-lesion"
    assert certainty.segmenter_options("demo")[0] == "demo-lesion"
    assert "demo-lesion" not in certainty.segmenter_options("xrv-densenet121-nih")
    # the registry's card was read from the bundled manifest at import; a process started after this training
    # would read the new entry, so the weights are loaded through the card of the entry just written
    handle = load_unet(segmenter_card("demo-lesion", stored), torch.device("cpu"), False)
    assert not handle.random_weights and handle.card.provenance["weights_sha256"] == record["sha256"]
    masks = segment(handle, torch.zeros(1, 1, 64, 64))
    assert list(masks) == ["lesion"] and masks["lesion"].shape == (1, 64, 64)


def test_train_segmenter_command_picks_the_lesion_recipe(monkeypatch, capsys):
    from xai_core import cli

    recipes = []

    def fake_train(recipe, **_):
        recipes.append(recipe)
        return {"file": f"{recipe.name}.pt", "sha256": "x", "train_seconds": 0.0, "metrics": {}}

    monkeypatch.setattr(cli, "train_segmenter", fake_train)
    assert cli.main(["train", "segmenter", "--name", "demo-lesion", "--steps", "3"]) == 0
    assert cli.main(["train", "segmenter", "--target", "lesion"]) == 0
    assert cli.main(["train", "segmenter"]) == 0
    assert cli.main(["train", "segmenter", "--name", "demo-lesion", "--shortcut", "0"]) == 0
    assert [(r.name, r.target, r.steps, r.shortcut) for r in recipes] == [
        ("demo-lesion", "lesion", 3, None), ("demo-lesion", "lesion", 1200, None),
        ("demo-anatomy", "anatomy", 400, None), ("demo-lesion", "lesion", 1200, 0.0)]
    capsys.readouterr()


def test_refine_view_gives_certainty_only_for_reported_findings(tmp_path, monkeypatch):
    from xai_core.engine import Engine
    from xai_core.imaging import Radiograph
    from xai_core.phantom import generate_case

    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(certainty, "shipped_calibrations_file", lambda: tmp_path / "shipped.json")
    engine = Engine("cpu")
    case = generate_case("val", 3, size=256)
    radiograph = Radiograph.from_array(case.image, source_name=case.case_id)
    prediction = engine.predict(radiograph, "demo")
    reported = [label for label, yes in zip(prediction.labels, prediction.positive, strict=True) if yes]
    rejected = [label for label, yes in zip(prediction.labels, prediction.positive, strict=True) if not yes]
    assert reported and rejected
    below = engine.refine_view(radiograph, "demo", "gradcam", rejected[0])
    assert below.certainty is None and below.segu_region is None and not below.finding["positive"]
    view = engine.refine_view(radiograph, "demo", "gradcam", reported[0])
    scores = view.certainty
    assert scores["segmenter"] == certainty.default_segmenter("demo") and not scores["calibrated"]
    assert "no SegU calibration" in scores["calibration_note"] and view.iou_curve[1].shape == (101,)

    rows, correct, labels = labelled_scores()
    calibration = certainty.fit_calibration(rows, correct, [reported[0]] * len(labels))
    handle, segmenter = engine.model("demo"), engine.model(scores["segmenter"])
    record = certainty.calibration_record(calibration, data="phantom:val", seed=0, n_cases=60, percent=5.0,
                                          model_weights=certainty.weights_id(handle),
                                          segmenter_weights=certainty.weights_id(segmenter), figures={})
    certainty.store_calibration("demo", "gradcam", scores["segmenter"], record)
    calibrated = engine.refine_view(radiograph, "demo", "gradcam", reported[0]).certainty
    assert calibrated["calibrated"] and calibrated["verdict"] in ("trust", "doubt")
    assert 0 < calibrated["certainty"] < 1 and calibrated["calibration_source"] == "own"
    assert {k: calibrated[k] for k in ("ciou", "cauitc", "inside_mass")} == {
        k: scores[k] for k in ("ciou", "cauitc", "inside_mass")}


def test_pooled_offsets_follow_how_often_each_finding_is_wrong():
    rng = np.random.default_rng(5)
    # the same score distribution for both findings; Atelectasis is wrong 1 time in 30, Nodule 1 time in 3
    rows, correct, labels = [], [], []
    for label, n_true, n_false in (("Atelectasis", 58, 2), ("Nodule", 40, 20)):
        for right in [True] * n_true + [False] * n_false:
            rows.append(rng.uniform(0.2, 0.8, 3))
            correct.append(right)
            labels.append(label)
    calibration = certainty.fit_calibration(np.array(rows), np.array(correct), labels, min_false=50)
    assert calibration["fallback_labels"] == ["Atelectasis", "Nodule"]
    offsets = calibration["pooled"]["label_offsets"]
    assert offsets["Atelectasis"] > offsets["Nodule"]
    same = np.full((2, 3), 0.5)
    p = certainty.certainties(calibration, ["Atelectasis", "Nodule"], same)
    assert p[0] > 0.85 > 0.75 > p[1]


def test_lesion_targets_leave_out_a_pneumothorax_too_faint_to_see():
    from xai_core.phantom import FINDINGS, generate_case
    from xai_core.training.segmenter import add_lesion_targets

    faint = visible = None
    for index in range(400):
        case = generate_case("train", index, seed=0, size=64, shortcut=0.0)
        if set(case.labels) == {"Pneumothorax"}:
            v = case.attributes["Pneumothorax"]["visibility"]
            faint = faint or (case if v < 0.1 else None)
            visible = visible or (case if v >= 0.1 else None)
        if faint and visible:
            break
    assert faint and visible, "the tag world has pneumothoraces on both sides of the cut"
    p = FINDINGS.index("Pneumothorax")
    for case, kept in ((faint, False), (visible, True)):
        item = add_lesion_targets(case, {}, "train", 0, parts=True, visible_from=0.1)
        assert bool(item["lesion"].any()) is kept and bool(item["lesion_parts"][p].any()) is kept
        everything = add_lesion_targets(case, {}, "train", 0, visible_from=0.0)
        assert torch.equal(everything["lesion"][0].bool(), torch.from_numpy(case.lesions["Pneumothorax"]))


def test_shortcut_figures_split_calls_by_what_drove_them():
    def row(label, correct, tag, without_tag=None):
        out = {"label": label, "correct": correct, "tag": tag}
        return out if without_tag is None else {**out, "without_tag": without_tag}

    rows = [row("Pneumothorax", True, False),  # untagged true positive: lesion-driven
            row("Pneumothorax", True, True, True),  # tagged, the call stands without the tag: lesion-driven
            row("Pneumothorax", True, True, False),  # tagged, the call goes with the tag: tag-reliant, not counted
            row("Pneumothorax", False, True, False),  # tag-driven false positive
            row("Pneumothorax", False, True, False),
            row("Pneumothorax", False, True, True),  # a false call that stands without the tag: not tag-driven
            row("Pneumothorax", False, False),  # untagged false positive
            row("Nodule", True, True),  # another finding: ignored
            row("Pneumothorax", False, True, False)]  # tag-driven, but its certainty is undefined
    certainty = np.array([0.9, 0.8, 0.1, 0.3, 0.2, 0.95, 0.5, 0.0, np.nan])
    ciou = np.array([0.1, 0.5, 0.0, 0.2, 0.6, 0.0, 0.0, 0.0, 0.9])  # lesion-driven 0.1, 0.5 vs tag-driven 0.2, 0.6, 0.9
    scores = np.column_stack([ciou, 1 - ciou, certainty])
    out = shortcut_figures(certainty, scores, rows, "Pneumothorax")
    assert (out["n_lesion_driven"], out["n_lesion_driven_untagged"], out["n_tag_driven"]) == (2, 1, 3)
    assert (out["n_tag_reliant_true"], out["n_false_standing_without_tag"], out["n_false_untagged"]) == (1, 1, 1)
    assert out["auroc"]["certainty"] == 1.0, "the undefined certainty is left out"
    assert out["auroc"]["ciou"] == pytest.approx(1 / 6) and out["auroc"]["cauitc"] == pytest.approx(5 / 6)
    assert out["auroc"]["inside_mass"] == 1.0
    low, high = out["certainty_ci"]
    assert low <= 1.0 <= high
    presence = out["by_presence"]  # 3 true (0.9, 0.8, 0.1) against 3 tagged false (0.3, 0.2, 0.95) and a NaN
    assert (presence["n_true"], presence["n_false_tagged"]) == (3, 4)
    assert presence["auroc"]["certainty"] == pytest.approx(4 / 9), "0.9 and 0.8 beat 0.3 and 0.2; 0.1 beats none"
    assert "probability" not in out["auroc"], "no peer without the rows' probabilities"
    probability = [0.6, 0.7, 0.9, 0.8, 0.65, 0.5, 0.5, 0.5, 0.99]  # lesion-driven 0.6, 0.7; tag-driven 0.8, 0.65, 0.99
    with_probability = [{**r, "probability": p} for r, p in zip(rows, probability, strict=True)]
    peered = shortcut_figures(certainty, scores, with_probability, "Pneumothorax")
    assert peered["auroc"]["probability"] == pytest.approx(1 / 6), "0.7 beats 0.65 only, of six pairs"
    lone = shortcut_figures(certainty[:3], scores[:3], rows[:3], "Pneumothorax")
    assert np.isnan(lone["auroc"]["certainty"]) and lone["certainty_ci"] is None, "no tag-driven call: undefined"
    with pytest.raises(InputError, match="without_tag"):
        shortcut_figures(certainty[:2], scores[:2], [rows[0], row("Pneumothorax", True, True)], "Pneumothorax")
