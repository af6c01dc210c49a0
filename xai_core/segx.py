"""SegX (refine a map to the anatomy that matters for a finding) and SegU (how certain the explanation is).

Certainty combines two scores in [0, 1]: inside-mass (the share of relevance inside the region; robust to small
shifts) and cIoU normalised by the best IoU a top-p% map could reach against a region of that size (so small regions
such as the heart are not penalised). certainty = (inside_mass + normalised cIoU) / 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from xai_core.errors import InputError, ModelError, ParameterError, UnknownNameError
from xai_core.files import data_dir, update_json
from xai_core.metrics.localisation import auitc, iou, top_fraction
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


class CalibrationError(InputError):
    """The labelled set cannot calibrate SegU (e.g. no false positives)."""


@dataclass(frozen=True)
class Region:
    mask: np.ndarray
    structures: tuple[str, ...]
    fallback: bool  # True when the label is not in the table and both lungs were used


def region_for(label: str, segmenter: str, masks: dict[str, np.ndarray]) -> Region:
    """The relevant region of a finding from a segmenter's named masks (dilated as the table says)."""
    table = REGIONS.get(segmenter)
    if table is None:
        raise UnknownNameError(f"no region table for segmenter '{segmenter}'; known: {', '.join(REGIONS)}")
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
    """SegU scores of one map against its finding's region: cIoU, cAUITC, inside-mass and the combined certainty."""
    a = np.asarray(relevance, np.float64)
    r = np.asarray(region, bool)
    if not r.any():
        return {"ciou": float("nan"), "cauitc": float("nan"), "inside_mass": float("nan"),
                "certainty": float("nan")}
    top = top_fraction(a[None], percent / 100)
    ciou = float(iou(top, r.reshape(1, -1))[0])
    shifted = a - a.min()
    total = shifted.sum()
    inside = float((shifted * r).sum() / total) if total > 0 else float("nan")
    k, area = int(top.sum()), int(r.sum())
    best = min(k, area) / max(k, area)
    certainty = (inside + min(ciou / best, 1.0)) / 2 if np.isfinite(inside) else float("nan")
    return {"ciou": ciou, "cauitc": float(auitc(a[None], r[None])[0]), "inside_mass": inside,
            "certainty": float(certainty)}


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


def segu_verdict(scores: dict[str, Any], calibration: dict[str, float] | None) -> dict[str, Any]:
    """The scores plus 'threshold' and 'verdict' ('trust' at or above the calibrated threshold, else 'doubt') where
    a calibration exists and the certainty is defined."""
    if calibration is None or not np.isfinite(scores["certainty"]):
        return scores
    verdict = "trust" if scores["certainty"] >= calibration["threshold"] else "doubt"
    return {**scores, "threshold": calibration["threshold"], "verdict": verdict}


def calibrations_file() -> Path:
    """Where SegU calibrations are kept: a run-time result in the data directory, never the weights manifest."""
    return data_dir() / "segu-calibrations.json"


def stored_calibration(model: str, method: str) -> dict[str, float] | None:
    """The SegU calibration of a model and method (None if never calibrated here)."""
    path = calibrations_file()
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("models", {}).get(model, {}).get(method)


def store_calibration(model: str, method: str, calibration: dict[str, float]) -> None:
    """Keep a calibration for a model and method (atomic write under a cross-process lock)."""
    def put(data: dict[str, Any]) -> None:
        data.setdefault("models", {}).setdefault(model, {})[method] = calibration

    update_json(calibrations_file(), put, {"note": "SegU calibrations measured by `segu --calibrate`.", "models": {}})
