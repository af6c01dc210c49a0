"""benchmarks/mimic.py's shortcut detail and scripts/mimic_tables.py on hand-made cases with known AUROCs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import mimic
from xai_core.phantom import FINDINGS, SHORTCUT_LABEL


def _case(visibility: float | None, tagged: bool) -> SimpleNamespace:
    positive = visibility is not None
    return SimpleNamespace(labels=[SHORTCUT_LABEL] if positive else [], shortcut=tagged,
                           attributes={SHORTCUT_LABEL: {"visibility": visibility}} if positive else {})


def _probabilities(scores: list[float]) -> np.ndarray:
    p = np.full((len(scores), len(FINDINGS)), 0.5)
    p[:, FINDINGS.index(SHORTCUT_LABEL)] = scores
    return p


def test_pneumothorax_bands_and_paired_difference_have_known_answers():
    cases = [_case(0.01, True), _case(0.05, False), _case(0.25, True), _case(0.9, False),  # band edges included
             _case(None, True), _case(None, False), _case(None, True), _case(None, False)]
    # the tag-reliant model ranks tagged negatives above faint positives; the other one ranks by the lesion
    shortcut = _probabilities([0.6, 0.3, 0.8, 0.9, 0.7, 0.1, 0.65, 0.2])
    lesion = _probabilities([0.15, 0.4, 0.8, 0.9, 0.12, 0.11, 0.13, 0.14])
    out = mimic.pneumothorax_details(cases, {"shortcut": shortcut, "lesion": lesion}, ["shortcut", "lesion"])
    assert out["positives"] == 4 and out["negatives"] == 4 and out["reference"] == "shortcut"
    assert out["band_positives"] == {"visibility < 0.05": 1, "0.05-0.25": 1, "visibility >= 0.25": 2,
                                     "tagged": 2, "untagged": 2}
    assert out["models"]["shortcut"]["by_band"] == pytest.approx(
        {"visibility < 0.05": 0.5, "0.05-0.25": 0.5, "visibility >= 0.25": 1.0, "tagged": 0.75, "untagged": 0.75})
    assert set(out["models"]["lesion"]["by_band"].values()) == {1.0}
    assert "difference_vs_reference" not in out["models"]["shortcut"]
    paired = out["models"]["lesion"]["difference_vs_reference"]
    assert paired["difference"] == pytest.approx(0.25), "1.0 - 12/16"
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]


def test_docs_tables_render_every_model_and_band():
    from scripts import mimic_tables

    cases = [_case(0.01, True), _case(0.9, False), _case(None, True), _case(None, False)]
    probabilities = {"a": _probabilities([0.6, 0.9, 0.7, 0.1]), "b": _probabilities([0.5, 0.9, 0.2, 0.1])}
    details = mimic.pneumothorax_details(cases, probabilities, ["a", "b"])
    interval = {"mean": 0.25, "ci_low": 0.2, "ci_high": 0.3, "n": 2}
    auroc = {"Pneumothorax": {"auroc": 0.75, "ci_low": 0.5, "ci_high": 1.0}, "macro": {"auroc": 0.9}}
    reliance = {"tag_effect_mean": interval, "tag_pushes_over_threshold": 0.5, "negatives": 2,
                "gradcam_share_on_tag": interval, "tag_region_area_share": 0.032}
    result = {"shortcut": {"seed": 11, "n": 4, "pneumothorax": details,
                           "tag_independent_auroc": {"a": auroc, "b": auroc}, "models": {"a": reliance, "b": reliance}}}
    text = mimic_tables.tables(result)
    assert "2 Pneumothorax positives, 2 negatives" in text
    assert "| `a` | 0.750 [0.500, 1.000] | reference | 0.900 | +0.250 [+0.200, +0.300] (n 2) | 50.0% |" in text
    assert "| `b` | 0.750 [0.500, 1.000] | +0.250 [" in text, "b ranks both positives above both negatives"
    assert "visibility < 0.05 (1) | 0.05-0.25 (0) | visibility >= 0.25 (1) | tagged (1) | untagged (1) |" in text
    assert "| `a` | 0.500 | - | 1.000 | 0.500 | 1.000 |" in text, "an empty band shows -"


def test_plausibility_tables_show_the_reference_and_relative_changes():
    from scripts import mimic_tables

    def pooled(kl: float) -> dict:
        cell = {"mean": kl, "ci_low": kl - 0.1, "ci_high": kl + 0.1, "n": 3}
        return {m: cell for m in ("gaze_kl", "gaze_nss", "gaze_cc", "gaze_sim", "relevance_mass")}

    change = {"change": -0.5, "ci_low": -0.6, "ci_high": -0.4}
    part = {"methods": ["gradcam"], "n_cases": 3, "seed": 11, "models": {
        "base": {"gradcam": {"pooled": pooled(1.0), "by_finding": {"Nodule": pooled(1.0)},
                             "change_vs_reference": None}},
        "guided": {"gradcam": {"pooled": pooled(0.5), "by_finding": {"Nodule": pooled(0.5)},
                               "change_vs_reference": {"gaze_kl": change, "gaze_nss": change}}}}}
    text = mimic_tables.plausibility_tables({"plausibility": part})
    assert "| `base` | 1.000 [0.900, 1.100] |" in text and "| reference | reference |" in text
    assert text.count("-50% [-60, -40]") == 2
    assert "| Nodule (3) | 1.00 / 1.00 / 1.000 | 0.50 / 0.50 / 0.500 |" in text
