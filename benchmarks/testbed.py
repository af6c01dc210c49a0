"""The testbed's bars (issue 24) on a held-out phantom seed: AUROC, the removal self-check, NEMt against Grad-CAM.

    python benchmarks/testbed.py [--n-auroc 1000] [--n-check 200] [--n-eval 120] [--json [FILE]]

Every figure is on test-split cases of `xai_core.baselines.REPORT_SEED`, a seed no training run, no manifest
metric and no choice of the augmentation recipe used; the self-check runs its default recipes and the held-out
ones (`MORE_RECIPES`, never drawn by the training augmentation). Per finding and pooled. Writes
results/bench_testbed.json with --json (docs/testbed.md is written from it).
"""

from __future__ import annotations

import argparse
import json
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
from xai_core.models import load_model
from xai_core.phantom import FINDINGS, generate_case
from xai_core.training.common import auroc_per_label, to_model_input

SEED = baselines.REPORT_SEED


def held_out_auroc(model: str, n: int) -> dict:
    """AUROC per finding and macro on n held-out test cases."""
    handle = load_model(model, "cpu")
    cases = [generate_case("test", i, seed=SEED, size=handle.card.input.size) for i in range(n)]
    x = torch.from_numpy(np.stack([to_model_input(c.image) for c in cases]))[:, None]
    y = np.stack([c.label_vector() for c in cases])
    with torch.inference_mode():
        p = torch.cat([torch.sigmoid(handle.module(x[i:i + 100])) for i in range(0, n, 100)]).float().numpy()
    auroc = auroc_per_label(y, p)
    return {"n": n, "by_finding": auroc, "macro": float(np.nanmean(list(auroc.values()))),
            "worst": min(auroc, key=auroc.get)}


def nemt_against_gradcam(model: str, n: int) -> dict:
    """Relevance mass and deletion AUC (ROAD imputation) of Grad-CAM, NEMt and a random map, per finding."""
    methods = ["gradcam", "nemt", "random"]
    metrics = ["relevance_mass", "deletion_auc"]
    with tempfile.TemporaryDirectory() as out:
        run_evaluation(model, "phantom:test", n, methods, metrics, Path(out), seed=SEED, device="cpu",
                       progress=False, workers=1, precision="float32", baseline_check_n=0)
        frame = pd.read_csv(Path(out) / "per_image.csv")
    table: dict = {"n_cases": n, "pooled": {}, "by_finding": {}}
    for method in methods:
        rows = frame[frame["method"] == method]
        table["pooled"][method] = {m: float(rows[m].mean()) for m in metrics}
        table["pooled"][method]["n"] = len(rows)
        for finding, group in rows.groupby("finding"):
            entry = {m: float(group[m].mean()) for m in metrics}
            entry["n"] = len(group)
            table["by_finding"].setdefault(finding, {})[method] = entry
    return table


def timing(model: str, repeats: int = 10) -> dict:
    """Seconds per image of NEMt and IG (one image, warm, float32)."""
    handle = load_model(model, "cpu")
    case = generate_case("test", 0, seed=SEED, size=handle.card.input.size)
    x = torch.from_numpy(to_model_input(case.image))[None, None]
    target = FINDINGS.index(case.labels[0]) if case.labels else 0
    out = {}
    for method in ("nemt", "ig"):
        explainer = get_explainer(method)
        explainer.explain(handle, x, target)
        start = time.perf_counter()
        for _ in range(repeats):
            explainer.explain(handle, x, target)
        out[method] = (time.perf_counter() - start) / repeats
    out["ig_over_nemt"] = out["ig"] / out["nemt"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n-auroc", type=int, default=1000)
    parser.add_argument("--n-check", type=int, default=200)
    parser.add_argument("--n-eval", type=int, default=120)
    parser.add_argument("--parts", default="auroc,check,nemt,timing",
                        help="which figures, comma-separated (the JSON file keeps the other parts it already has)")
    add_json_option(parser, "testbed")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    torch.manual_seed(0)
    results = json.loads(args.json.read_text()) if args.json is not None and args.json.is_file() else {}
    results.update({"model": args.model, "split": "test", "seed": SEED})
    if "auroc" in parts:
        results["auroc"] = held_out_auroc(args.model, args.n_auroc)
        print(f"AUROC macro {results['auroc']['macro']:.4f}, worst {results['auroc']['worst']} "
              f"{results['auroc']['by_finding'][results['auroc']['worst']]:.4f}", flush=True)
    if "check" in parts:
        results["baseline_check"] = baselines.run(args.model, n=args.n_check, seed=SEED, more=True)
        print(baselines.format_table(results["baseline_check"]), flush=True)
    if "nemt" in parts:
        results["nemt"] = nemt_against_gradcam(args.model, args.n_eval)
        for finding, row in sorted(results["nemt"]["by_finding"].items()):
            print(finding, {m: {k: round(v, 4) for k, v in e.items()} for m, e in row.items()}, flush=True)
        print("pooled", results["nemt"]["pooled"], flush=True)
    if "timing" in parts:
        results["timing_s"] = timing(args.model)
        print("timing", results["timing_s"], flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
