"""SegX (refine a map to the region that matters for a finding) and SegU's scores of a map against a region.

Regions come from an anatomy segmenter (a table from finding to structures: SegX overlays) or from a class-agnostic
lesion segmenter (its thresholded output, the paper's m_seg: SegU). SegU's scores (Zhang et al., SegX/SegU):
cIoU = IoU(top-p% of the map, region); cAUITC = area under IoU(a_norm >= t, region) over t in [0, 1];
inside-mass = sum(a * region) / sum(a). The probability that a finding is right is calibrated from them per
finding (`xai_core.certainty`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from xai_core.errors import InputError, ModelError, ParameterError, UnknownNameError
from xai_core.metrics.localisation import iou, iou_curve, top_fraction
from xai_core.metrics.stats import bootstrap_interval

LUNGS = ("right_lung", "left_lung")
# label -> (structures, dilation in pixels at the segmenter's resolution); data, not code branches.
REGIONS: dict[str, dict[str, tuple[tuple[str, ...], int]]] = {
    "demo-anatomy": {
        "Cardiomegaly": (("heart",), 0),
        "Effusion": ((*LUNGS, "diaphragm"), 6),
        "Enlarged Cardiomediastinum": (("heart", "mediastinum"), 0),
        **{label: (LUNGS, 6) for label in (
            "Pneumothorax", "Nodule", "Mass", "Consolidation", "Atelectasis", "Infiltration", "Pneumonia", "Edema",
            "Emphysema", "Fibrosis", "Lung Lesion", "Lung Opacity", "Pleural_Thickening")},
    },
    "xrv-pspnet": {
        "Cardiomegaly": (("Heart",), 0),
        "Effusion": (("Left Lung", "Right Lung", "Facies Diaphragmatica"), 12),
        "Enlarged Cardiomediastinum": (("Heart", "Mediastinum", "Aorta"), 0),
        "Hernia": (("Facies Diaphragmatica", "Mediastinum"), 12),
        "Fracture": (("Left Clavicle", "Right Clavicle", "Spine", "Left Scapula", "Right Scapula"), 6),
        **{label: (("Left Lung", "Right Lung"), 12) for label in (
            "Pneumothorax", "Nodule", "Mass", "Consolidation", "Atelectasis", "Infiltration", "Pneumonia", "Edema",
            "Emphysema", "Fibrosis", "Lung Lesion", "Lung Opacity", "Pleural_Thickening")},
    },
}
FALLBACK = {"demo-anatomy": (LUNGS, 6), "xrv-pspnet": (("Left Lung", "Right Lung"), 12)}
# class-agnostic lesion segmenters -> the name of their one mask: the region of every finding (SegU's m_seg)
LESION_SEGMENTERS = {"demo-lesion": "lesion"}
SEGU_SCORES = ("ciou", "cauitc", "inside_mass")


class CalibrationError(InputError):
    """The labelled set cannot calibrate SegU (e.g. no false positives)."""


@dataclass(frozen=True)
class Region:
    """A finding's region on a segmenter's grid: the mask and what it is made of."""

    mask: np.ndarray
    structures: tuple[str, ...]
    fallback: bool  # True when the label is not in the table and both lungs were used
    kind: str = "anatomy"  # "anatomy" (the table's structures) or "lesion" (a lesion segmenter's output)


def region_for(label: str, segmenter: str, masks: dict[str, np.ndarray]) -> Region:
    """The relevant region of a finding from a segmenter's named masks: the table's structures (dilated as it says)
    for an anatomy segmenter, the one lesion mask for a lesion segmenter."""
    if segmenter in LESION_SEGMENTERS:
        name = LESION_SEGMENTERS[segmenter]
        if name not in masks:
            raise ModelError(f"segmenter '{segmenter}' gave no '{name}' mask")
        return Region(np.asarray(masks[name], bool), (name,), False, "lesion")
    table = REGIONS.get(segmenter)
    if table is None:
        known = ", ".join([*REGIONS, *LESION_SEGMENTERS])
        raise UnknownNameError(f"no region table for segmenter '{segmenter}'; known: {known}")
    fallback = label not in table
    structures, dilation = FALLBACK[segmenter] if fallback else table[label]
    missing = [s for s in structures if s not in masks]
    if missing:
        raise ModelError(f"segmenter '{segmenter}' gave no mask for {', '.join(missing)}")
    mask = np.zeros_like(next(iter(masks.values())), dtype=bool)
    for name in structures:
        mask |= masks[name].astype(bool)
    if dilation:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
        mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    return Region(mask, structures, fallback)


def refine(relevance: np.ndarray, region: np.ndarray, mode: str = "soft", percent: float = 5.0) -> np.ndarray:
    """SegX: 'binary' = top-p% pixels of the map inside the region (float 0/1); 'soft' = map * region, rescaled
    to [0, 1]."""
    relevance = np.asarray(relevance, np.float32)
    region = np.asarray(region, bool)
    if relevance.shape != region.shape:
        raise ValueError(f"map {relevance.shape} and region {region.shape} differ in shape")
    if mode == "binary":
        top = top_fraction(relevance[None], percent / 100)[0].reshape(relevance.shape)
        return (top & region).astype(np.float32)
    if mode == "soft":
        inside = np.where(region, relevance - relevance.min(), 0.0)
        top = float(inside.max())
        return (inside / top).astype(np.float32) if top > 0 else np.zeros_like(relevance)
    raise ParameterError(f"unknown SegX mode '{mode}'; use 'binary' or 'soft'")


def segu(relevance: np.ndarray, region: np.ndarray, percent: float = 5.0) -> dict[str, float]:
    """SegU's scores of one map against a region: cIoU (top-p% pixels of the map vs the region), cAUITC (area under
    IoU(a_norm >= t, region), 101 thresholds, trapezoid rule) and inside-mass (sum(a * region) / sum(a), negative
    relevance clipped to 0). An empty region scores 0 on all three (the map lies on no lesion); a flat map, or one
    without positive relevance, scores NaN (it has no ranking)."""
    a = np.asarray(relevance, np.float64)
    r = np.asarray(region, bool)
    if a.shape != r.shape:
        raise ValueError(f"map {a.shape} and region {r.shape} differ in shape")
    positive = np.clip(a, 0.0, None)
    total = float(positive.sum())
    if not np.isfinite(a).all() or a.max() <= a.min() or total <= 0:
        return dict.fromkeys(SEGU_SCORES, float("nan"))
    top = top_fraction(a[None], percent / 100)
    ts, curve = iou_curve(a[None], r[None])
    return {"ciou": float(iou(top, r.reshape(1, -1))[0]), "cauitc": float(np.trapezoid(curve[0], ts)),
            "inside_mass": float((positive * r).sum() / total)}


def calibrate(certainty: np.ndarray, correct: np.ndarray, *, seed: int = 0, n_boot: int = 2000) -> dict[str, float]:
    """How well certainty separates true from false positive findings: AUROC with a bootstrap 95% interval and the
    threshold maximising Youden's J (certainty >= threshold: 'trust')."""
    c = np.asarray(certainty, np.float64)
    y = np.asarray(correct, bool)
    keep = np.isfinite(c)
    c, y = c[keep], y[keep]
    if y.all() or not y.any():
        raise CalibrationError(f"calibration needs both true and false positives (got {int(y.sum())} true, "
                               f"{int((~y).sum())} false)")
    auroc = float(roc_auc_score(y, c))

    def resampled_auroc(c_boot: np.ndarray, y_boot: np.ndarray) -> float:  # undefined on a one-class resample
        return float(roc_auc_score(y_boot, c_boot)) if y_boot.any() and not y_boot.all() else float("nan")

    ci_low, ci_high = bootstrap_interval((c, y), resampled_auroc, n_boot=n_boot, seed=seed, paired=True)
    fpr, tpr, thresholds = roc_curve(y, c)
    best = int(np.argmax(tpr - fpr))
    return {"auroc": auroc, "ci_low": ci_low, "ci_high": ci_high,
            "threshold": float(min(thresholds[best], 1.0)), "n_true": int(y.sum()), "n_false": int((~y).sum())}


def shortcut_figures(certainty: np.ndarray, scores: np.ndarray, rows: list[dict[str, Any]],
                     shortcut_label: str) -> dict[str, Any]:
    """SegU on `shortcut_label`'s positives: how well the certainty (with a bootstrap interval) and each raw score
    separate lesion-driven from tag-driven calls (AUROC; NaN where a group is empty; undefined values left out),
    and the classifier's `probability` as their peer where every row has one, with the size of every group.
    Lesion-driven: the finding is there and the call stands on the film without its tag (`without_tag`, needed
    for every tagged call); tag-driven: no finding, and the call goes with the tag; tag-reliant true positives are
    counted but in neither group. `by_presence`: every true positive against every
    tagged false one, whatever drove it."""
    missing = [i for i, row in enumerate(rows)
               if row["label"] == shortcut_label and row["tag"] and row.get("without_tag") is None]
    if missing:
        raise InputError(f"{len(missing)} tagged {shortcut_label} call(s) without 'without_tag' (the call on the film "
                         f"without its tag), e.g. row {missing[0]}")
    label = np.array([row["label"] == shortcut_label for row in rows], bool)
    correct = np.array([row["correct"] for row in rows], bool)
    tag = np.array([row["tag"] for row in rows], bool)
    stands = np.array([not row["tag"] or bool(row.get("without_tag")) for row in rows], bool)
    lesion_driven, tag_driven = label & correct & stands, label & ~correct & tag & ~stands
    values = {"certainty": certainty, **{name: scores[:, i] for i, name in enumerate(SEGU_SCORES)}}
    if all("probability" in row for row in rows):  # the classifier's own probability: the peer SegU must beat
        values["probability"] = np.array([row["probability"] for row in rows], np.float64)

    def aurocs(positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
        out = {}
        for name, x in values.items():
            keep = (positive | negative) & np.isfinite(x)
            y = positive[keep]
            out[name] = float(roc_auc_score(y, x[keep])) if y.any() and not y.all() else float("nan")
        return out

    defined = np.isfinite(certainty)
    interval = (calibrate(certainty[lesion_driven | tag_driven], lesion_driven[lesion_driven | tag_driven])
                if min((lesion_driven & defined).sum(), (tag_driven & defined).sum()) >= 2 else None)
    return {"label": shortcut_label, "n_lesion_driven": int(lesion_driven.sum()),
            "n_lesion_driven_untagged": int((lesion_driven & ~tag).sum()), "n_tag_driven": int(tag_driven.sum()),
            "n_tag_reliant_true": int((label & correct & ~stands).sum()),
            "n_false_standing_without_tag": int((label & ~correct & tag & stands).sum()),
            "n_false_untagged": int((label & ~correct & ~tag).sum()),
            "auroc": aurocs(lesion_driven, tag_driven),
            "certainty_ci": None if interval is None else [interval["ci_low"], interval["ci_high"]],
            "by_presence": {"n_true": int((label & correct).sum()),
                            "n_false_tagged": int((label & ~correct & tag).sum()),
                            "auroc": aurocs(label & correct, label & ~correct & tag)}}


def by_label(certainty: np.ndarray, correct: np.ndarray, labels: list[str]) -> dict[str, object]:
    """True vs false positives compared within each finding: per label the counts, mean certainties and AUROC,
    and the within-label AUROC (the chance that a true positive is more certain than a false positive of the same
    finding; ties count half). Pooled AUROC mixes findings whose regions differ in size, and so in certainty."""
    c = np.asarray(certainty, np.float64)
    y = np.asarray(correct, bool)
    names = np.asarray(labels)
    per_label: dict[str, dict[str, float]] = {}
    wins = pairs = 0.0
    for label in sorted(set(labels)):
        keep = (names == label) & np.isfinite(c)
        true, false = c[keep & y], c[keep & ~y]
        entry = {"n_true": len(true), "n_false": len(false),
                 "mean_true": float(true.mean()) if len(true) else float("nan"),
                 "mean_false": float(false.mean()) if len(false) else float("nan")}
        if len(true) and len(false):
            difference = true[:, None] - false[None, :]
            label_wins = float((difference > 0).sum() + 0.5 * (difference == 0).sum())
            entry["auroc"] = label_wins / difference.size
            wins, pairs = wins + label_wins, pairs + difference.size
        per_label[label] = entry
    return {"per_label": per_label, "within_label_auroc": wins / pairs if pairs else float("nan"),
            "within_label_pairs": int(pairs)}
