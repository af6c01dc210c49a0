"""SegX refinement and SegU scores on hand-made maps and masks with known answers; the region table."""

from __future__ import annotations

import numpy as np
import pytest

from xai_core.segx import REGIONS, by_label, calibrate, refine, region_for, segu


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_binary_and_soft_refinement():
    relevance = np.zeros((20, 20), np.float32)
    relevance[0:2, 0:10] = 1.0  # 20 px outside the region
    relevance[10:12, 10:15] = 0.8  # 10 px inside
    region = square(20, 8, 8, 10)
    binary = refine(relevance, region, "binary", percent=5)  # top 20 px: all outside -> nothing left
    assert binary.sum() == 0
    binary = refine(relevance, region, "binary", percent=10)  # top 40 px include the 10 inside ones
    assert binary.sum() == 10 and binary[10:12, 10:15].all()
    soft = refine(relevance, region, "soft")
    assert soft.max() == 1.0 and soft[~region].max() == 0 and soft[10, 10] == 1.0
    with pytest.raises(ValueError, match="binary' or 'soft"):
        refine(relevance, region, "hard")


def test_segu_scores_known_answers():
    region = square(20, 0, 0, 10)  # 100 px
    inside = np.where(region, 1.0, 0.0)
    scores = segu(inside, region, percent=25)  # top 100 px == the region
    assert set(scores) == {"ciou", "cauitc", "inside_mass"}
    assert scores["ciou"] == pytest.approx(1.0) and scores["inside_mass"] == pytest.approx(1.0)
    assert scores["cauitc"] == pytest.approx(1 - 0.75 * 0.01 / 2)
    outside = np.where(region, 0.0, 1.0)
    scores = segu(outside, region, percent=25)
    assert scores["ciou"] == 0 and scores["inside_mass"] == 0
    assert scores["cauitc"] == pytest.approx(0.25 * 0.01 / 2)  # only t = 0 (every pixel) touches the region
    half = np.zeros((20, 20))
    half[0:10, 5:15] = 1.0  # half inside
    assert segu(half, region, percent=25)["inside_mass"] == pytest.approx(0.5)


def test_regions_from_the_table_and_the_visible_fallback():
    masks = {name: np.zeros((30, 30), bool) for name in
             ("right_lung", "left_lung", "heart", "mediastinum", "spine", "clavicles", "diaphragm")}
    masks["heart"][10:20, 10:20] = True
    masks["right_lung"][0:10, 0:5] = True
    heart = region_for("Cardiomegaly", "demo-anatomy", masks)
    assert heart.mask.sum() == 100 and not heart.fallback
    lungs = region_for("Nodule", "demo-anatomy", masks)
    assert lungs.mask.sum() > 50 and lungs.structures == ("right_lung", "left_lung")  # dilated by 6 px
    unknown = region_for("Hernia", "demo-anatomy", masks)
    assert unknown.fallback and unknown.structures == ("right_lung", "left_lung")


def test_table_covers_every_label_of_the_bundled_and_torchxrayvision_models():
    from xai_core.models import get_card, list_models

    for name in list_models("classifier"):
        labels = set(get_card(name).labels)
        table = REGIONS["demo-anatomy" if name.startswith("demo") else "xrv-pspnet"]
        assert labels <= set(table), f"{name}: {sorted(labels - set(table))} fall back to the lungs"


def test_calibration_is_reproducible_and_finds_a_separating_threshold():
    rng = np.random.default_rng(0)
    correct = rng.random(200) < 0.6
    certainty = np.where(correct, rng.normal(0.7, 0.1, 200), rng.normal(0.4, 0.1, 200))
    first, second = calibrate(certainty, correct, seed=3), calibrate(certainty, correct, seed=3)
    assert first == second
    assert first["auroc"] > 0.9 and first["ci_low"] < first["auroc"] < first["ci_high"]
    assert 0.45 < first["threshold"] < 0.65
    with pytest.raises(ValueError, match="both true and false"):
        calibrate(certainty, np.ones(200, bool))


def test_xrv_pspnet_segmenter_names_every_structure_the_table_uses(tmp_path, monkeypatch):
    import torch

    from xai_core.models import MissingWeightsError, get_card, load_model
    from xai_core.models.segmenters import segment
    from xai_core.segx import FALLBACK

    card = get_card("xrv-pspnet")
    assert card.family == "segmenter" and card.input.size == 512 and len(card.labels) == 14
    used = {s for structures, _ in REGIONS["xrv-pspnet"].values() for s in structures} | set(FALLBACK["xrv-pspnet"][0])
    assert used <= set(card.labels)
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"pspnet_chestxray_best_model_4\.pth"):
        load_model("xrv-pspnet")
    handle = load_model("xrv-pspnet", allow_random_weights=True)  # no weights can be fetched here
    assert handle.random_weights
    x = torch.linspace(-1024, 1024, 128 * 128).reshape(1, 1, 128, 128)  # any size works; 512 is its native one
    masks = segment(handle, x)
    assert list(masks) == card.labels and all(m.shape == (1, 128, 128) and m.dtype == torch.bool
                                              for m in masks.values())
    named = {name: m[0].numpy() for name, m in masks.items()}
    assert region_for("Cardiomegaly", "xrv-pspnet", named).structures == ("Heart",)
    assert region_for("Hernia", "xrv-pspnet", named).structures == ("Facies Diaphragmatica", "Mediastinum")


def test_segx_iou_metric_keeps_the_top_pixels_inside_the_anatomy():
    from xai_core.evaluation import EvalCase, image_metrics
    from xai_core.models import load_model

    handle = load_model("demo")
    lesion = square(100, 40, 40, 22)  # 484 px, ~5% of the image
    region = square(100, 30, 30, 40)
    relevance = np.zeros((100, 100), np.float32)
    relevance[0:10, 0:30] = 2.0  # the strongest 300 px lie outside the anatomy
    relevance[lesion] = 1.0
    case = EvalCase("c", np.zeros((100, 100), np.float32), ["Mass"], {"Mass": lesion})
    values = image_metrics(handle, case, "Mass", relevance, {"iou_at_5", "segx_iou_at_5"}, np.zeros((100, 100), bool),
                           6.0, region=region)
    assert values["iou_at_5"] == pytest.approx(200 / (500 + 484 - 200))  # top 500: 300 outside + 200 of the lesion
    assert values["segx_iou_at_5"] == pytest.approx(484 / 500)  # refined: the whole lesion + 16 region pixels


def test_true_and_false_positives_compared_within_each_finding():
    # pooled, the large-region finding's false positives look more certain than the small-region true positives;
    # within each finding, true positives are the more certain ones
    certainty = np.array([0.2, 0.3, 0.1, 0.7, 0.8, 0.6, 0.5])
    correct = np.array([True, True, False, True, True, False, False])
    labels = ["Cardiomegaly"] * 3 + ["Nodule"] * 4
    result = by_label(certainty, correct, labels)
    assert result["per_label"]["Cardiomegaly"]["auroc"] == 1.0 and result["per_label"]["Nodule"]["auroc"] == 1.0
    assert result["within_label_auroc"] == 1.0 and result["within_label_pairs"] == 2 + 4
    assert calibrate(certainty, correct)["auroc"] < 0.8
    single = by_label(np.array([0.5, 0.5]), np.array([True, False]), ["Mass", "Mass"])
    assert single["per_label"]["Mass"]["auroc"] == 0.5
    no_false = by_label(np.array([0.5]), np.array([True]), ["Mass"])
    assert "auroc" not in no_false["per_label"]["Mass"] and np.isnan(no_false["within_label_auroc"])
