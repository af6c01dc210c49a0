"""SegU certainty: the probability that a positive finding is right, calibrated per finding from SegU's scores of
its explanation (cIoU, cAUITC and inside-mass against the lesion region, `xai_core.segx.segu`), and the files that
keep the calibrations.

A calibration is a logistic regression from the three scores (standardised) to "the finding is right", fitted on
the positive findings of one model, method and segmenter on `val`: one per finding with enough true and false
positives, the pooled one for the others (listed in `fallback_labels`). The pooled one has an offset per finding
(shrunk towards the pooled intercept), so a finding that is rarely wrong on `val` keeps a higher certainty than one
that often is. A finding's verdict threshold maximises Youden's J on its own points (the pooled points for a
pooled finding). Calibrations live in `$XAI_DATA_DIR/segu-calibrations.json` (made here) and
`assets/models/segu-calibrations.json` (shipped with the bundled models); the data directory's is read first, and
one made for other weights is never used.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve

from xai_core.errors import InputError
from xai_core.files import data_dir, finite_json, update_json
from xai_core.models import ModelHandle, bundled, get_card, list_models
from xai_core.segx import LESION_SEGMENTERS, SEGU_SCORES, CalibrationError, calibrate

LESION_SEGMENTER = "demo-lesion"
SEGU_PERCENT = 5.0  # the paper's p for cIoU; calibrations are made and applied at this p
MIN_TRUE = 10  # a finding gets its own calibration from this many true and MIN_FALSE false positives on val
MIN_FALSE = 10
CALIBRATION_CASES = 3000  # val cases of a calibration: enough for the frequent false positives to get their own
REGULARISATION_C = 1.0  # sklearn's C (inverse L2 strength) on standardised scores
FILE_NAME = "segu-calibrations.json"
FORMAT_VERSION = 3
DATA_NOTE = "SegU calibrations made here by `python -m xai_core segu --calibrate`."
SHIPPED_NOTE = ("SegU calibrations of the bundled models, made by `python -m xai_core segu --calibrate --ship` "
                "(per model, method and segmenter).")


def calibrations_file() -> Path:
    """The run-time calibration file, in the data directory (never the weights manifest)."""
    return data_dir() / FILE_NAME


def shipped_calibrations_file() -> Path:
    """The calibration file shipped with the bundled models (read after the data directory's)."""
    return bundled.MODELS_DIR / FILE_NAME


def bundled_weights_present(name: str) -> bool:
    """Whether a bundled model's weights file is on this machine."""
    card = get_card(name)
    return (bundled.MODELS_DIR / (card.weights_file or f"{name}.pt")).is_file()


def default_segmenter(model: str) -> str:
    """SegU's region source for a model: `demo-lesion` for the phantom-trained demo family where its weights exist,
    else the anatomy segmenter (`demo-anatomy` for the demo family, `xrv-pspnet` for the others)."""
    if not model.startswith("demo"):
        return "xrv-pspnet"
    return LESION_SEGMENTER if bundled_weights_present(LESION_SEGMENTER) else "demo-anatomy"


def segmenter_options(model: str) -> list[str]:
    """The segmenters SegU can take its region from for a model, its default first (lesion segmenters only for
    the demo family, and only with their weights)."""
    default = default_segmenter(model)
    others = [name for name in list_models("segmenter") if name != default and (
        name not in LESION_SEGMENTERS or (model.startswith("demo") and bundled_weights_present(name)))]
    return [default, *others]


def weights_id(handle: ModelHandle) -> str | None:
    """What a calibration records of a model's weights: their sha256 from the card ("random-weights" for a model
    run without its weights)."""
    return "random-weights" if handle.random_weights else handle.card.provenance.get("weights_sha256")


def score_matrix(rows: list[dict[str, float]]) -> np.ndarray:
    """SegU score dicts -> an array [N, 3] in `SEGU_SCORES` order."""
    return np.array([[row[name] for name in SEGU_SCORES] for row in rows], np.float64).reshape(-1, len(SEGU_SCORES))


def _logistic(x: np.ndarray, y: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """A logistic regression on the standardised scores; with `labels`, plus one offset per finding (a one-hot
    term under the same L2 penalty, so a finding with few points stays near the pooled intercept)."""
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    features = (x - mean) / scale
    names = sorted({str(label) for label in labels}) if labels is not None else []
    if names:
        features = np.hstack([features, _one_hot(labels, names)])
    model = LogisticRegression(C=REGULARISATION_C, max_iter=1000).fit(features, y)
    coef = model.coef_[0]
    params: dict[str, Any] = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": coef[:x.shape[1]].tolist(),
                              "intercept": float(model.intercept_[0])}
    if names:
        params["label_offsets"] = dict(zip(names, coef[x.shape[1]:].tolist(), strict=True))
    return params


def _one_hot(labels: np.ndarray, names: list[str]) -> np.ndarray:
    return (np.asarray(labels, dtype=object)[:, None] == np.asarray(names, dtype=object)[None, :]).astype(np.float64)


def _probability(params: dict[str, Any], x: np.ndarray, label: str | None = None) -> np.ndarray:
    z = ((x - np.asarray(params["mean"])) / np.asarray(params["scale"])) @ np.asarray(params["coef"])
    offset = params.get("label_offsets", {}).get(label, 0.0) if label is not None else 0.0
    return expit(z + params["intercept"] + offset)


def _youden(p: np.ndarray, y: np.ndarray) -> float:
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def fit_calibration(scores: np.ndarray, correct: np.ndarray, labels: list[str], *, min_true: int = MIN_TRUE,
                    min_false: int = MIN_FALSE) -> dict[str, Any]:
    """Calibrate SegU from positive findings: `scores` [N, 3] (`score_matrix`), whether each finding is right and
    its label. Rows with an undefined score are left out. Deterministic: the same inputs give the same result."""
    x = np.asarray(scores, np.float64).reshape(-1, len(SEGU_SCORES))
    y = np.asarray(correct, bool)
    names = np.asarray(labels, dtype=object)
    keep = np.isfinite(x).all(1)
    x, y, names = x[keep], y[keep], names[keep]
    if y.all() or not y.any():
        raise CalibrationError(f"calibration needs both true and false positives (got {int(y.sum())} true, "
                               f"{int((~y).sum())} false)")
    pooled = _logistic(x, y, names)
    pooled_probability = np.array([_probability(pooled, x[i:i + 1], str(names[i]))[0] for i in range(len(x))])
    pooled.update(threshold=_youden(pooled_probability, y), n_true=int(y.sum()), n_false=int((~y).sum()))
    per_label: dict[str, dict[str, Any]] = {}
    for label in sorted({str(name) for name in names}):
        own = names == label
        entry: dict[str, Any] = {"n_true": int((y & own).sum()), "n_false": int((~y & own).sum())}
        if entry["n_true"] >= min_true and entry["n_false"] >= min_false:
            params = _logistic(x[own], y[own])
            entry.update(source="own", **params, threshold=_youden(_probability(params, x[own]), y[own]))
        else:
            entry.update(source="pooled", threshold=pooled["threshold"])
        per_label[label] = entry
    return {"kind": "logistic", "features": list(SEGU_SCORES), "regularisation_c": REGULARISATION_C,
            "min_true": min_true, "min_false": min_false, "sklearn": sklearn.__version__, "pooled": pooled,
            "per_label": per_label,
            "fallback_labels": [label for label, entry in per_label.items() if entry["source"] == "pooled"]}


def _label_model(calibration: dict[str, Any], label: str) -> tuple[dict[str, Any], float, str]:
    entry = calibration["per_label"].get(label)
    if entry is not None and entry["source"] == "own":
        return entry, float(entry["threshold"]), "own"
    return calibration["pooled"], float(calibration["pooled"]["threshold"]), "pooled"


def certainties(calibration: dict[str, Any], labels: list[str], scores: np.ndarray) -> np.ndarray:
    """The calibrated probability that each finding is right (NaN where a score is undefined)."""
    x = np.asarray(scores, np.float64).reshape(-1, len(SEGU_SCORES))
    out = np.full(len(x), np.nan)
    for i, label in enumerate(labels):
        out[i] = _probability(_label_model(calibration, label)[0], x[i:i + 1], label)[0]
    return out


def fallback_note(calibration: dict[str, Any], label: str) -> str:
    """Why a finding uses the pooled calibration ('' where it has its own)."""
    entry = calibration["per_label"].get(label)
    if entry is not None and entry["source"] == "own":
        return ""
    data = calibration.get("data", "the calibration data")
    if entry is None:
        return f"{label} had no positive findings in {data}: its certainty comes from the pooled calibration."
    return (f"{label} had {entry['n_true']} true and {entry['n_false']} false positives in {data}, fewer than the "
            f"{calibration['min_true']} true and {calibration['min_false']} false its own calibration needs: its "
            f"certainty comes from the pooled calibration, with an offset for {label}.")


def calibrated_certainty(calibration: dict[str, Any] | None, label: str, scores: dict[str, float],
                         note: str = "") -> dict[str, Any]:
    """What SegU adds to a finding's scores: `certainty` (the calibrated probability that the finding is right; NaN
    without a calibration), `calibrated`, and with a calibration `threshold`, `verdict` ('trust' at or above the
    finding's threshold, else 'doubt'), `calibration_source` ('own' or 'pooled') and `calibration_file`;
    `calibration_note` says why there is no calibration or why the pooled one is used."""
    if calibration is None:
        return {"certainty": float("nan"), "calibrated": False, "calibration_note": note}
    params, threshold, source = _label_model(calibration, label)
    probability = float(_probability(params, score_matrix([scores]), label)[0])
    out: dict[str, Any] = {"certainty": probability, "calibrated": True, "threshold": threshold,
                           "calibration_source": source, "calibration_file": calibration.get("file"),
                           "calibration_note": fallback_note(calibration, label)}
    if np.isfinite(probability):
        out["verdict"] = "trust" if probability >= threshold else "doubt"
    return out


def paper_table(scores: np.ndarray, correct: np.ndarray) -> dict[str, dict[str, float]]:
    """The paper's Table-4 form: mean cIoU, cAUITC (and inside-mass) of correct vs incorrect positive findings."""
    x = np.asarray(scores, np.float64).reshape(-1, len(SEGU_SCORES))
    y = np.asarray(correct, bool)
    out = {}
    for name, rows in (("correct", y), ("incorrect", ~y)):
        part = x[rows]
        means = {score: float(np.nanmean(part[:, i])) if np.isfinite(part[:, i]).any() else float("nan")
                 for i, score in enumerate(SEGU_SCORES)}
        out[name] = {"n": int(rows.sum()), **means}
    return out


def score_aurocs(scores: np.ndarray, correct: np.ndarray, *, seed: int = 0, n_boot: int = 2000
                 ) -> dict[str, dict[str, float]]:
    """AUROC (with a bootstrap 95% interval) of each raw score separating true from false positives (NaN where a
    score is defined for one class only)."""
    x = np.asarray(scores, np.float64).reshape(-1, len(SEGU_SCORES))
    out = {}
    for i, name in enumerate(SEGU_SCORES):
        try:
            result = calibrate(x[:, i], correct, seed=seed, n_boot=n_boot)
        except CalibrationError:
            result = dict.fromkeys(("auroc", "ci_low", "ci_high"), float("nan"))
        out[name] = {key: result[key] for key in ("auroc", "ci_low", "ci_high")}
    return out


def calibration_command(model: str, method: str, segmenter: str) -> str:
    """The command that makes a calibration in the data directory."""
    return (f"python -m xai_core segu --model {model} --method {method} --segmenter {segmenter} --data phantom:val "
            f"--n {CALIBRATION_CASES} --calibrate")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete it or make it again with `segu --calibrate`"
                         ) from exc


def find_calibration(model: str, method: str, segmenter: str, *, model_weights: str | None = None,
                     segmenter_weights: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The calibration of a model, method and segmenter (the data directory's first, then the shipped one), with
    `file` naming where it came from; or None and a sentence saying why there is none. A calibration recorded for
    other weights (`weights_id`, checked where given) is skipped."""
    stale = []
    for path in (calibrations_file(), shipped_calibrations_file()):
        entry = _read(path).get("models", {}).get(model, {}).get(method, {}).get(segmenter)
        if not isinstance(entry, dict) or "per_label" not in entry:  # none, or one from before per-finding SegU
            continue
        if (model_weights is not None and entry.get("model_weights") != model_weights) or (
                segmenter_weights is not None and entry.get("segmenter_weights") != segmenter_weights):
            stale.append(str(path))
            continue
        return {**entry, "file": str(path)}, ""
    command = calibration_command(model, method, segmenter)
    if stale:
        return None, (f"the SegU calibration of {model} with {method} and {segmenter} in {', '.join(stale)} was made "
                      f"for other weights; make a new one with `{command}`")
    return None, f"no SegU calibration for {model} with {method} and {segmenter}; make one with `{command}`"


def calibration_record(calibration: dict[str, Any], *, data: str, seed: int, n_cases: int, percent: float,
                       model_weights: str | None, segmenter_weights: str | None, figures: dict[str, Any],
                       shortcut: float | None = None, command: str | None = None) -> dict[str, Any]:
    """A calibration as stored: the fitted models plus the data, seed, weights and figures it came from."""
    if command is None:
        command = "python -m xai_core " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return finite_json({**calibration, "data": data, "seed": seed, "n_cases": n_cases, "shortcut": shortcut,
                        "percent": percent, "model_weights": model_weights, "segmenter_weights": segmenter_weights,
                        "command": command, "figures": figures})


def store_calibration(model: str, method: str, segmenter: str, record: dict[str, Any], *, shipped: bool = False,
                      path: Path | None = None) -> Path:
    """Keep a calibration (atomic write under a cross-process lock) in the data directory's file, the shipped one
    (`shipped`) or `path`; returns the file."""
    target = path or (shipped_calibrations_file() if shipped else calibrations_file())

    def put(data: dict[str, Any]) -> None:
        data["version"] = FORMAT_VERSION
        methods = data.setdefault("models", {}).setdefault(model, {})
        by_segmenter = methods.get(method)
        if not isinstance(by_segmenter, dict) or not all(isinstance(v, dict) for v in by_segmenter.values()):
            by_segmenter = {}  # a calibration from before per-finding SegU: replaced
        by_segmenter[segmenter] = record
        methods[method] = dict(sorted(by_segmenter.items()))
        data["models"] = {name: dict(sorted(data["models"][name].items())) for name in sorted(data["models"])}

    update_json(target, put, {"note": SHIPPED_NOTE if shipped else DATA_NOTE, "version": FORMAT_VERSION,
                              "models": {}})
    return target
