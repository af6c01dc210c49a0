"""Explanation-guided training (issue 26) on a held-out phantom seed: plausibility, accuracy, the shortcut.

    python benchmarks/mimic.py [--models demo,demo-mimic,...] [--n 200] [--n-auroc 1000] [--methods gradcam,ig]
                               [--parts plausibility,auroc,shortcut] [--json [FILE]]

All on test-split cases of `xai_core.baselines.REPORT_SEED` (no training run or recipe choice looked at them).
- plausibility: gaze KL, NSS, CC, SIM (the `mimic` gaze kernel) and relevance mass of each model's maps on every
  positive finding of `--n` cases, through the evaluation runner (the Evaluate page's definitions); per finding
  and pooled, and paired against the first model (relative change of the mean, bootstrap interval over cases).
- auroc: per finding and macro on `--n-auroc` cases, with bootstrap intervals, and the paired macro difference
  against the first model (the same resampled cases for both).
- shortcut: models trained on the tag world: AUROC on a split where the tag is independent of the label
  (strength 0), Pneumothorax's paired against the first model and by how visible the (treated) pneumothorax is
  and whether its film carries the tag; the tag's causal effect (the same tag-free film with and without the tag
  painted in: mean change of the Pneumothorax probability and the share of Pneumothorax-negative films it pushes
  over the operating point); and the share of Grad-CAM relevance around the tag.
Writes results/bench_mimic.json with --json (docs/mimic.md is written from it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_json_option, write_json

from xai_core import baselines
from xai_core.evaluation.runner import run_evaluation
from xai_core.explainers import get_explainer
from xai_core.metrics.stats import bootstrap_ci
from xai_core.models import load_model
from xai_core.phantom import FINDINGS, SHORTCUT_LABEL, generate_case
from xai_core.phantom.generator import TAG_BOX
from xai_core.training.common import auroc_per_label, to_model_input

SEED = baselines.REPORT_SEED
GAZE = ["gaze_kl", "gaze_nss", "gaze_cc", "gaze_sim"]
METRICS = [*GAZE, "relevance_mass"]
TAG_MARGIN = 0.08  # the tag box widened by 8% of the side: Grad-CAM's cells are 1/7 of it
N_BOOT = 1000
AUROC_BOOT = 200  # resamples of the AUROC intervals (each one scores every finding)
SHARE_N = 100  # negative films the Grad-CAM share near the tag is measured on


def _interval(values: np.ndarray) -> dict:
    low, high = bootstrap_ci(values, n_boot=N_BOOT)
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else None, "ci_low": low, "ci_high": high, "n": len(v)}


def _relative_change(ours: np.ndarray, reference: np.ndarray, cases: np.ndarray, seed: int = 0) -> dict:
    """(mean ours - mean reference) / |mean reference| over paired rows, with a bootstrap interval over cases (a
    case's findings share one gaze map, so cases, not rows, are resampled)."""
    ok = np.isfinite(ours) & np.isfinite(reference)
    a, b, groups = ours[ok], reference[ok], cases[ok]
    ids, inverse = np.unique(groups, return_inverse=True)
    sum_a, sum_b = np.bincount(inverse, a, len(ids)), np.bincount(inverse, b, len(ids))
    count = np.bincount(inverse, None, len(ids))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), (N_BOOT, len(ids)))
    n = count[picks].sum(1)
    boot = (sum_a[picks].sum(1) - sum_b[picks].sum(1)) / n / np.abs(sum_b[picks].sum(1) / n)
    return {"change": float((a.mean() - b.mean()) / abs(b.mean())), "ci_low": float(np.quantile(boot, 0.025)),
            "ci_high": float(np.quantile(boot, 0.975)), "n": len(a), "n_cases": len(ids), "resampled": "cases"}


def plausibility(models: list[str], methods: list[str], n: int) -> dict:
    """Gaze agreement and relevance mass per model and method, pooled and per finding, paired vs models[0]."""
    frames = {}
    seconds = {}
    for model in models:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            run_evaluation(model, "phantom:test", n, methods, METRICS, Path(out), seed=SEED, device="cpu",
                           progress=False, workers=1, precision="float32", baseline_check_n=0)
            frames[model] = pd.read_csv(Path(out) / "per_image.csv")
        seconds[model] = round(time.perf_counter() - started, 1)
    result: dict = {"n_cases": n, "seed": SEED, "methods": methods, "seconds": seconds, "models": {}}
    reference = frames[models[0]].set_index(["case_id", "finding", "method"])
    for model, frame in frames.items():
        entry: dict = {}
        for method in methods:
            rows = frame[frame["method"] == method]
            pooled = {metric: _interval(rows[metric].to_numpy(float)) for metric in METRICS}
            by_finding = {finding: {metric: _interval(part[metric].to_numpy(float)) for metric in METRICS}
                          for finding, part in rows.groupby("finding")}
            paired = rows.set_index(["case_id", "finding", "method"]).join(reference, rsuffix="_ref", how="inner")
            case_ids = paired.index.get_level_values("case_id").to_numpy()
            change = {metric: _relative_change(paired[metric].to_numpy(float), paired[f"{metric}_ref"].to_numpy(float),
                                               case_ids) for metric in METRICS} if model != models[0] else None
            entry[method] = {"pooled": pooled, "by_finding": by_finding, "change_vs_reference": change}
        result["models"][model] = entry
    result["reference"] = models[0]
    return result


def _test_cases(n: int, shortcut: float | None = None) -> list:
    return [generate_case("test", i, seed=SEED, size=224, shortcut=shortcut) for i in range(n)]


def _probabilities(model: str, images: list[np.ndarray]) -> np.ndarray:
    handle = load_model(model, "cpu")
    x = torch.from_numpy(np.stack([to_model_input(image) for image in images]))[:, None]
    with torch.inference_mode():
        return torch.cat([torch.sigmoid(handle.module(x[i:i + 100])) for i in range(0, len(x), 100)]).float().numpy()


def _auroc_with_interval(y: np.ndarray, p: np.ndarray) -> dict:
    rng = np.random.default_rng(0)
    base = auroc_per_label(y, p)
    boots = []
    for _ in range(AUROC_BOOT):
        pick = rng.integers(0, len(y), len(y))
        boots.append(auroc_per_label(y[pick], p[pick]))
    out = {}
    for name in FINDINGS:
        values = np.array([b[name] for b in boots])
        out[name] = {"auroc": base[name], "ci_low": float(np.nanquantile(values, 0.025)),
                     "ci_high": float(np.nanquantile(values, 0.975))}
    macro_boot = np.array([np.nanmean(list(b.values())) for b in boots])
    out["macro"] = {"auroc": float(np.nanmean(list(base.values()))), "ci_low": float(np.quantile(macro_boot, 0.025)),
                    "ci_high": float(np.quantile(macro_boot, 0.975))}
    return out


def auroc(models: list[str], n: int, shortcut: float | None = None,
          probabilities: dict[str, np.ndarray] | None = None, cases: list | None = None) -> dict:
    """AUROC per finding and macro of each model on the same n test cases (with the tag at `shortcut`, or `cases`
    already made that way); each model's probabilities are put in `probabilities` when it is given."""
    cases = _test_cases(n, shortcut) if cases is None else cases
    y = np.stack([c.label_vector() for c in cases])
    result: dict = {"n": n, "seed": SEED, "shortcut": shortcut, "bootstrap": AUROC_BOOT, "models": {}}
    probabilities = {} if probabilities is None else probabilities
    probabilities.update({model: _probabilities(model, [c.image for c in cases]) for model in models})
    for model in models:
        result["models"][model] = _auroc_with_interval(y, probabilities[model])
    rng = np.random.default_rng(1)
    picks = [rng.integers(0, n, n) for _ in range(AUROC_BOOT)]

    def macro(p: np.ndarray, pick: np.ndarray) -> float:
        return float(np.nanmean(list(auroc_per_label(y[pick], p[pick]).values())))

    reference = probabilities[models[0]]
    for model in models[1:]:
        diffs = np.array([macro(probabilities[model], pick) - macro(reference, pick) for pick in picks])
        everything = np.arange(n)
        result["models"][model]["macro_difference_vs_reference"] = {
            "difference": macro(probabilities[model], everything) - macro(reference, everything),
            "ci_low": float(np.quantile(diffs, 0.025)), "ci_high": float(np.quantile(diffs, 0.975))}
    result["reference"] = models[0]
    return result


def _with_tag(image: np.ndarray) -> np.ndarray:
    """The film with the shortcut tag burned in as the generator does."""
    S = image.shape[0]
    out = image.copy()
    out[TAG_BOX[0] * S // 100:TAG_BOX[2] * S // 100, TAG_BOX[1] * S // 100:TAG_BOX[3] * S // 100] = 0.98
    return out


def _tag_region(S: int) -> np.ndarray:
    m = int(TAG_MARGIN * S)
    region = np.zeros((S, S), bool)
    region[max(0, TAG_BOX[0] * S // 100 - m):TAG_BOX[2] * S // 100 + m,
           max(0, TAG_BOX[1] * S // 100 - m):TAG_BOX[3] * S // 100 + m] = True
    return region


def pneumothorax_details(cases: list, probabilities: dict[str, np.ndarray], models: list[str]) -> dict:
    """On the tag-independent split: each model's Pneumothorax AUROC paired against models[0] (bootstrap over
    cases), and by how visible the pneumothorax is and whether its film carries the tag (every band's positives
    against all negatives; visibility as the case's attribute records it, to 3 decimals)."""
    label = FINDINGS.index(SHORTCUT_LABEL)
    y = np.array([SHORTCUT_LABEL in c.labels for c in cases])
    visibility = np.array([c.attributes[SHORTCUT_LABEL]["visibility"] if SHORTCUT_LABEL in c.labels else np.nan
                           for c in cases])
    tagged = np.array([c.shortcut for c in cases])
    bands = {"visibility < 0.05": visibility < 0.05, "0.05-0.25": (visibility >= 0.05) & (visibility < 0.25),
             "visibility >= 0.25": visibility >= 0.25, "tagged": y & tagged, "untagged": y & ~tagged}

    def score(truth: np.ndarray, p: np.ndarray) -> float:
        return auroc_per_label(truth[:, None], p[:, None], [SHORTCUT_LABEL])[SHORTCUT_LABEL]

    rng = np.random.default_rng(2)
    picks = [rng.integers(0, len(y), len(y)) for _ in range(N_BOOT)]
    out: dict = {"positives": int(y.sum()), "negatives": int((~y).sum()),
                 "band_positives": {name: int(m.sum()) for name, m in bands.items()}, "models": {}}
    reference = probabilities[models[0]][:, label]
    for model in models:
        p = probabilities[model][:, label]
        entry: dict = {"by_band": {name: score(y[m | ~y], p[m | ~y]) for name, m in bands.items()}}
        if model != models[0]:
            diffs = np.array([score(y[i], p[i]) - score(y[i], reference[i]) for i in picks])
            entry["difference_vs_reference"] = {"difference": score(y, p) - score(y, reference),
                                                "ci_low": float(np.nanquantile(diffs, 0.025)),
                                                "ci_high": float(np.nanquantile(diffs, 0.975))}
        out["models"][model] = entry
    out["reference"] = models[0]
    return out


def shortcut(models: list[str], n: int) -> dict:
    """Reliance on the tag: AUROC where the tag is independent of the label, its causal effect, relevance on it."""
    label = FINDINGS.index(SHORTCUT_LABEL)
    probabilities: dict[str, np.ndarray] = {}
    cases = _test_cases(n, 0.0)
    independent = auroc(models, n, shortcut=0.0, probabilities=probabilities, cases=cases)
    details = pneumothorax_details(cases, probabilities, models)
    clean = _test_cases(n)
    negatives = [c for c in clean if SHORTCUT_LABEL not in c.labels]
    gradcam = get_explainer("gradcam")
    region = _tag_region(224)
    result: dict = {"n": n, "seed": SEED, "tag_independent_auroc": independent["models"],
                    "pneumothorax": details, "models": {}}
    for model in models:
        handle = load_model(model, "cpu")
        threshold = handle.card.thresholds.get(SHORTCUT_LABEL, 0.5)
        before = _probabilities(model, [c.image for c in negatives])[:, label]
        after = _probabilities(model, [_with_tag(c.image) for c in negatives])[:, label]
        shares = []
        for case in negatives[:SHARE_N]:
            x = torch.from_numpy(to_model_input(_with_tag(case.image)))[None, None]
            cam = gradcam.explain(handle, x, torch.tensor([label]))[0].detach().numpy()
            total = cam.sum()
            shares.append(float(cam[region].sum() / total) if total > 0 else float("nan"))
        result["models"][model] = {
            "tag_effect_mean": _interval(after - before),
            "tag_pushes_over_threshold": float(np.mean((after >= threshold) & (before < threshold))),
            "negatives": len(negatives),
            "gradcam_share_on_tag": _interval(np.array(shares)),  # its "n": the films it is measured on
            "tag_region_area_share": float(region.mean()),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,demo-mimic,demo-mimic-discriminator,demo-mimic-control")
    parser.add_argument("--shortcut-models", default="demo-shortcut,demo-shortcut-mimic,demo-shortcut-mimic-control")
    parser.add_argument("--methods", default="gradcam,ig")
    parser.add_argument("--n", type=int, default=200, help="cases for the plausibility part")
    parser.add_argument("--n-auroc", type=int, default=1000)
    parser.add_argument("--parts", default="plausibility,auroc,shortcut")
    parser.add_argument("--seed", type=int, default=baselines.REPORT_SEED,
                        help=f"test seed (default {baselines.REPORT_SEED}, the report seed; "
                             f"{baselines.HELD_OUT_SEED} is the one recipes are tuned on)")
    add_json_option(parser, "mimic")
    args = parser.parse_args()
    global SEED
    SEED = args.seed
    models = [m for m in args.models.split(",") if m]
    shortcut_models = [m for m in args.shortcut_models.split(",") if m]
    parts = set(args.parts.split(","))
    results: dict = {}
    if "auroc" in parts:
        results["auroc"] = auroc(models, args.n_auroc)
        print({m: round(v["macro"]["auroc"], 4) for m, v in results["auroc"]["models"].items()}, flush=True)
    if "shortcut" in parts and shortcut_models:
        results["shortcut"] = shortcut(shortcut_models, args.n_auroc)
        print({m: v["tag_effect_mean"]["mean"] for m, v in results["shortcut"]["models"].items()}, flush=True)
    if "plausibility" in parts:
        results["plausibility"] = plausibility(models, [m for m in args.methods.split(",") if m], args.n)
        for model, entry in results["plausibility"]["models"].items():
            print(model, {method: {k: round(v["mean"], 4) for k, v in e["pooled"].items()}
                          for method, e in entry.items()}, flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
