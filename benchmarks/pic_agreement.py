"""PIC (SIC and AIC) agreement with `saliency.metrics.pic`: ours at WebP effort 0 and 100 against the reference.

    python benchmarks/pic_agreement.py [--n 20] [--methods gradcam,ig,nemt,random] [--scores model,detail]
                                       [--threads 1] [--json [OUT]]
    python benchmarks/pic_agreement.py --summarize results/bench_pic_agreement.json [--json [OUT]]
    python -m xai_core bench pic_agreement --json

For the first positive finding of each of the first `--n` positive phantom test cases (seed 7, at the model's input
size) and each method (maps of `demo`), three sides compute the SIC and AIC AUCs from the same image, saliency
map, random mask of kept pixels (1%, seeded by the case index), thresholds, minimum score (0.5) and score function
(one function object): (a) ours at lossless WebP effort 0, (b) ours at effort 100 (the reference's `quality`),
(c) the reference (`compute_pic_metric`, once with the probability, once with its thresholded read-out). Score
functions: `model`, demo's float32 probability of the finding (AIC: probability >= the card's operating point);
`detail`, benchmarks/pic.py's image-detail 'model' (SIC only, no minimum). Reported per method and pooled: max and
mean |delta AUC| of (a)-(c), (b)-(c), (a)-(b) over the images both sides kept, every side's skips by rule, the
images on which the sides disagree about skipping, and the seconds per map of each side. The reference is run
with one fix (`patch_reference_all_kept`): its bokeh image of an all-kept mask keeps the grey image's shape.
With --json, the rows are written after every case (`"complete": false` until the end); --summarize rebuilds the
summary of such a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from benchmarks.pic import detail_score
from xai_core.explainers import get_explainer
from xai_core.metrics import pic
from xai_core.models import ModelHandle, load_model
from xai_core.models.cards import to_model_range
from xai_core.phantom import generate_case

SIDES = ("e0", "e100", "reference")  # (a), (b), (c)
PAIRS = (("e0", "reference"), ("e100", "reference"), ("e0", "e100"))
MIN_SCORE = 0.5
SEED = 7

Predict = Callable[[np.ndarray], np.ndarray]


def model_score(handle: ModelHandle, target: int, batch: int = 16) -> Predict:
    """uint8 images [N, S, S] -> the model's float32 sigmoid probability of `target` [N]."""
    forward = handle.scorer(False)

    def predict(images: np.ndarray) -> np.ndarray:
        pixels = np.asarray(images, np.float32) / 255.0
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch):
                x = torch.from_numpy(to_model_range(pixels[start:start + batch], handle.card.input))
                out.append(torch.sigmoid(forward(x))[:, target].cpu().numpy())
        return np.concatenate(out).astype(np.float64)
    return predict


@contextmanager
def webp_effort(effort: int) -> Iterator[None]:
    """Our PIC's lossless WebP effort set to `effort` for the duration."""
    before = pic.WEBP_EFFORT
    pic.WEBP_EFFORT = effort
    try:
        yield
    finally:
        pic.WEBP_EFFORT = before


def patch_reference_all_kept(reference: Any) -> Counter:
    """Make the reference's `create_blurred_image` return a grey [H, W] image as [H, W] when every pixel is kept
    (saliency 0.2.1 returns it as [H, W, 1], which its WebP encoder refuses: a map whose top 75% is a tie, e.g. a
    Grad-CAM map that is zero over most of the image). Returns the counter of the calls it reshaped."""
    original = reference.create_blurred_image
    reshaped: Counter = Counter()

    def create_blurred_image(full_img: np.ndarray, pixel_mask: np.ndarray, method: str = "linear") -> np.ndarray:
        out = original(full_img, pixel_mask, method)
        if out.shape != full_img.shape:
            reshaped["all_kept"] += 1
            out = out.reshape(full_img.shape)
        return out

    reference.create_blurred_image = create_blurred_image
    return reshaped


def reference_rule(message: str) -> str:
    """The SKIP_RULES name of a ComputePicMetricError, from its message."""
    if "lower than `min_pred_value`" in message:
        return "low_score"
    if "entropy" in message:
        return "no_information"
    if "completely blurred image is not lower" in message:
        return "blurred_as_high"
    return "other"


def outcome(result: Any) -> dict[str, Any]:
    """{"auc": float or None, "skip": the skip rule or None} of one side's result (a curve or a skip)."""
    if isinstance(result, pic.PicSkip):
        return {"auc": None, "skip": result.rule}
    return {"auc": float(result.auc), "skip": None}


def run_ours(image: np.ndarray, saliency_map: np.ndarray, predict: Predict, mask: np.ndarray,
             curves: dict[str, Callable[[np.ndarray], np.ndarray]], min_score: float,
             effort: int) -> tuple[dict[str, dict[str, Any]], float]:
    """Our curves of one map at WebP `effort` (all read-outs from one set of bokeh images) and the seconds."""
    with webp_effort(effort):
        start = time.perf_counter()
        results = pic.pic_curves(image, saliency_map, predict, mask, curves, min_score=min_score)
        seconds = time.perf_counter() - start
    return {name: outcome(r) for name, r in results.items()}, seconds


def run_reference(reference: Any, image: np.ndarray, saliency_map: np.ndarray, predict: Predict,
                  mask: np.ndarray, curves: dict[str, Callable[[np.ndarray], np.ndarray]],
                  min_score: float) -> tuple[dict[str, dict[str, Any]], float]:
    """The reference's curves of one map (one `compute_pic_metric` call per read-out) and the total seconds."""
    out: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for name, read_out in curves.items():
        try:
            result = reference.compute_pic_metric(image, saliency_map, mask, lambda x, f=read_out: f(predict(x)),
                                                  list(pic.THRESHOLDS), min_pred_value=min_score)
            out[name] = {"auc": float(result.auc), "skip": None}
        except reference.ComputePicMetricError as error:
            out[name] = {"auc": None, "skip": reference_rule(str(error))}
    return out, time.perf_counter() - start


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """|delta AUC| per pair over the images both sides kept, skips per side and rule, skip disagreements, seconds."""
    summary: dict[str, Any] = {"maps": len(rows)}
    for a, b in PAIRS:
        both = [abs(r[a]["auc"] - r[b]["auc"]) for r in rows if r[a]["auc"] is not None and r[b]["auc"] is not None]
        summary[f"{a}-{b}"] = {"n": len(both), "max": max(both) if both else None,
                               "mean": float(np.mean(both)) if both else None}
    summary["skips"] = {side: dict(Counter(r[side]["skip"] for r in rows if r[side]["skip"])) for side in SIDES}
    summary["skip_disagreements"] = [
        {"case": r["case"], "method": r["method"], **{side: r[side]["skip"] for side in SIDES}}
        for r in rows if len({r[side]["skip"] for side in SIDES}) > 1]
    return summary


def show(side: dict[str, Any]) -> str:
    """One side's AUC, or the rule that skipped it."""
    return f"skip {side['skip']}" if side["skip"] else f"{side['auc']:.4f}"


def print_summary(label: str, summary: dict[str, Any]) -> None:
    deltas = "  ".join(f"{a}-{b} n {s['n']:2d}" + (f" max {s['max']:.4f} mean {s['mean']:.4f}" if s["n"] else "")
                       for (a, b), s in ((pair, summary[f"{pair[0]}-{pair[1]}"]) for pair in PAIRS))
    skips = ", ".join(f"{side} {dict(counts) or 0}" for side, counts in summary["skips"].items())
    print(f"{label:<22} {deltas}\n{'':<22} skips: {skips}; skip disagreements: "
          f"{len(summary['skip_disagreements'])}")


def seconds(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and median seconds per map of each side."""
    return {side: {"mean": float(np.mean([r["seconds"][side] for r in rows])),
                   "median": float(np.median([r["seconds"][side] for r in rows]))} for side in SIDES}


def report(rows: list[dict[str, Any]], methods: list[str], scores: list[str]) -> dict[str, Any]:
    """Per score function, curve and method (and pooled): the summary of `rows`; seconds per map, over every map
    and over the maps whose SIC curve every side kept (printed as well)."""
    out: dict[str, Any] = {"summary": {}, "seconds_per_map": {}, "seconds_per_kept_map": {}}
    for score in scores:
        for name in ("sic", "aic"):
            sub = [r for r in rows if r["score"] == score and r["curve"] == name]
            if not sub:
                continue
            for method in [*methods, "pooled"]:
                summary = summarize(sub if method == "pooled" else [r for r in sub if r["method"] == method])
                out["summary"][f"{score}/{name}/{method}"] = summary
                print_summary(f"{score} {name} {method}", summary)
        maps = [r for r in rows if r["score"] == score and r["curve"] == "sic"]  # one row per map
        for method in [*methods, "pooled"]:
            part = maps if method == "pooled" else [r for r in maps if r["method"] == method]
            kept = [r for r in part if all(r[side]["auc"] is not None for side in SIDES)]
            for key, chosen in (("seconds_per_map", part), ("seconds_per_kept_map", kept)):
                if chosen:
                    out[key][f"{score}/{method}"] = timing = seconds(chosen)
                    print(f"{score} {method:<8} {key.replace('_', ' ')} (mean, median; n {len(chosen)}): " +
                          "  ".join(f"{side} {t['mean']:.2f}, {t['median']:.2f}" for side, t in timing.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="positive test cases (one map per case and method)")
    parser.add_argument("--methods", default="gradcam,ig,nemt,random")
    parser.add_argument("--scores", default="model", help="score functions: model, detail (comma-separated)")
    parser.add_argument("--threads", type=int, default=1, help="threads for our bokeh images (the reference: 1)")
    parser.add_argument("--summarize", type=Path, default=None, metavar="FILE",
                        help="measure nothing: summarize the rows of a result file (e.g. an unfinished run's)")
    add_json_option(parser, "pic_agreement")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        results = json.loads(args.summarize.read_text())
        results.update(report(results["rows"], results["methods"], results["scores"]))
        write_json(args.json, results)
        return
    from saliency.metrics import pic as reference

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # saliency 0.2.1 calls np.trapz, removed in NumPy 2
    reshaped = patch_reference_all_kept(reference)
    pic.set_threads(args.threads)
    methods = args.methods.split(",")
    scores = args.scores.split(",")
    handle = load_model("demo")
    size = handle.card.input.size
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"seed": SEED, "size": size, "threads": pic.threads(), "methods": methods,
                               "scores": scores, "min_score": MIN_SCORE, "rows": rows}
    index = cases = 0
    while cases < args.n:
        case = generate_case("test", index, seed=SEED, size=size)
        index += 1
        labels = [f for f in case.labels if f in handle.card.labels]
        if not labels:
            continue
        cases += 1
        finding = labels[0]
        target = handle.card.labels.index(finding)
        image = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
        x = torch.from_numpy(to_model_range(case.image, handle.card.input))[None].to(handle.device)
        mask = pic.random_mask(image.shape, 0.01, seed=index)
        for method in methods:
            saliency_map = get_explainer(method).explain(handle, x, torch.tensor([target]))[0]
            saliency_map = saliency_map.detach().float().cpu().numpy()
            for score in scores:
                if score == "model":
                    predict = model_score(handle, target)
                    operating_point = handle.card.thresholds.get(finding, 0.5)
                    curves = {"sic": lambda s: s,
                              "aic": lambda s, t=operating_point: (s >= t).astype(np.float64)}
                    min_score = MIN_SCORE
                else:
                    weights = case.lesions[finding].astype(np.float64) + 0.05
                    predict, curves, min_score = detail_score(weights, mask), {"sic": lambda s: s}, 0.0
                e0, e0_s = run_ours(image, saliency_map, predict, mask, curves, min_score, 0)
                e100, e100_s = run_ours(image, saliency_map, predict, mask, curves, min_score, 100)
                before = reshaped["all_kept"]
                theirs, reference_s = run_reference(reference, image, saliency_map, predict, mask, curves, min_score)
                for name in curves:
                    rows.append({"case": case.case_id, "finding": finding, "method": method, "score": score,
                                 "curve": name, "e0": e0[name], "e100": e100[name], "reference": theirs[name],
                                 "seconds": {"e0": e0_s, "e100": e100_s, "reference": reference_s},
                                 "reference_all_kept": reshaped["all_kept"] > before})
                    aucs = "  ".join(f"{side} {show(rows[-1][side])}" for side in SIDES)
                    print(f"{case.case_id} {finding:<14} {method:<8} {score:<6} {name}  {aucs}", flush=True)
                print(f"{'':<40} seconds per map: e0 {e0_s:.2f}  e100 {e100_s:.2f}  reference {reference_s:.2f}",
                      flush=True)
        write_json(args.json, {**results, "n_cases": cases, "complete": False,
                               "reference_all_kept_reshaped": reshaped["all_kept"]})
    results.update(n_cases=cases, complete=True, reference_all_kept_reshaped=reshaped["all_kept"])
    results.update(report(rows, methods, scores))
    print(f"reference bokeh images of an all-kept mask reshaped to [H, W]: {reshaped['all_kept']}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
