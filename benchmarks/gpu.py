"""The CUDA figures: predict throughput at batch 1 and 32, each explainer's latency at batch 1 and its batched
throughput, NEMt from pixels against a plain classifier forward, and `evaluate` on phantom test cases. Device time
is synchronised around every timed call (torch.cuda.synchronize), medians over repeats after warm-up calls.

    python benchmarks/gpu.py [--device cuda] [--models demo,xrv-densenet121-all] [--evaluate-n 200] [--json OUT]
    benchmarks/gpu.sh            # the prepared device run (writes $OUT/gpu.json when $OUT is set)

`--device cpu --quick` runs every code path in seconds (the test suite's smoke test); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from benchmarks.explainers import inputs
from xai_core.evaluation.runner import run_evaluation
from xai_core.explainers import get_explainer, list_explainers
from xai_core.models import ModelHandle, load_model

FAST_BATCH = 32
SLOW_BATCH = 8


def synchronised(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def median_seconds(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmups: int) -> float:
    """Median wall seconds of `fn` (device work included) over `repeats` calls after `warmups` calls."""
    for _ in range(warmups):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def model_inputs(handle: ModelHandle, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n phantom test positives at the model's input size and channels, on its device, with their first finding."""
    x, t = inputs(n)
    size, channels = handle.card.input.size, handle.card.input.channels
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x
    low, high = handle.card.input.value_range
    x = (x * (high - low) + low).repeat(1, channels, 1, 1)
    labels = list(handle.card.labels)
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Effusion", "Mass", "Nodule", "Pneumothorax"]
    t = torch.tensor([labels.index(names[i]) if names[i] in labels else 0 for i in t.tolist()])
    return x.to(handle.device), t


def predict_rows(handle: ModelHandle, sync: Callable[[], None], repeats: int) -> list[dict[str, Any]]:
    rows = []
    x, _ = model_inputs(handle, FAST_BATCH)
    scorer = handle.scorer()
    for batch in (1, FAST_BATCH):
        with torch.inference_mode():
            seconds = median_seconds(lambda b=batch: scorer(x[:b]), sync, repeats, 3)
        rows.append({"model": handle.card.name, "batch": batch, "seconds": seconds, "images_per_s": batch / seconds})
    return rows


def explainer_rows(handle: ModelHandle, sync: Callable[[], None], repeats: int, methods: list[str]
                   ) -> list[dict[str, Any]]:
    rows = []
    x, t = model_inputs(handle, FAST_BATCH)
    for method in methods:
        explainer = get_explainer(method)
        if not explainer.available(handle):
            rows.append({"model": handle.card.name, "method": method, "skipped": "not available for this model"})
            continue
        fast = explainer.cost == "fast"
        batch = FAST_BATCH if fast else SLOW_BATCH
        reps, warm = (repeats, 3) if fast else (max(1, repeats // 5), 1)
        one = median_seconds(lambda e=explainer: e.explain(handle, x[:1], t[:1]), sync, reps, warm)
        many = median_seconds(lambda e=explainer, b=batch: e.explain(handle, x[:b], t[:b]), sync, reps, warm)
        rows.append({"model": handle.card.name, "method": method, "latency_s_batch1": one, "batch": batch,
                     "images_per_s": batch / many})
    return rows


def nemt_row(handle: ModelHandle, sync: Callable[[], None], repeats: int) -> dict[str, Any] | None:
    """NEMt's map from pixels against the classifier's own forward, same batch."""
    explainer = get_explainer("nemt")
    if not explainer.available(handle):
        return None
    x, t = model_inputs(handle, FAST_BATCH)
    scorer = handle.scorer()
    with torch.inference_mode():
        forward = median_seconds(lambda: scorer(x), sync, repeats, 3)
    nemt = median_seconds(lambda: explainer.explain(handle, x, t), sync, repeats, 3)
    return {"model": handle.card.name, "batch": FAST_BATCH, "forward_s": forward, "nemt_s": nemt,
            "nemt_over_forward": nemt / forward}


def evaluate_row(device: str, n: int, methods: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_evaluation("demo", "phantom:test", n, methods, ["relevance_mass", "pointing_game",
                                 "deletion_auc", "insertion_auc", "sparseness"], Path(out), seed=11, device=device,
                                 progress=False, workers=1)
        seconds = time.perf_counter() - start
    return {"model": "demo", "cases": n, "methods": methods, "seconds": seconds, "cases_per_s": n / seconds,
            "relevance_mass": {m: summary[m]["relevance_mass"]["mean"] for m in methods}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="demo,xrv-densenet121-all",
                        help="comma-separated (models without weights here run with random weights: same cost)")
    parser.add_argument("--methods", default=",".join(m for m in list_explainers() if m != "random"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--evaluate-n", type=int, default=200)
    parser.add_argument("--evaluate-methods", default="gradcam,gradcampp,nemt,random")
    parser.add_argument("--quick", action="store_true", help="tiny repeats and 4 evaluate cases (smoke test)")
    add_json_option(parser, "gpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine (or --device cpu --quick for a smoke test)", file=sys.stderr)
        return 2
    global FAST_BATCH, SLOW_BATCH
    if args.quick:
        FAST_BATCH, SLOW_BATCH = 2, 1
        args.repeats, args.evaluate_n = 1, 4
    torch.set_grad_enabled(True)
    sync = synchronised(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "predict": [], "explainers": [],
                               "nemt": [], "quick": args.quick}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        handle = load_model(model, device, allow_random_weights=True)
        results["predict"] += predict_rows(handle, sync, args.repeats)
        results["explainers"] += explainer_rows(handle, sync, args.repeats, methods)
        row = nemt_row(handle, sync, args.repeats)
        if row:
            results["nemt"].append(row)
        for line in results["predict"][-2:]:
            print(f"predict  {model:<22} batch {line['batch']:>3} {line['images_per_s']:10.1f} img/s")
        for line in results["explainers"][-len(methods):]:
            if "skipped" not in line:
                print(f"explain  {model:<22} {line['method']:<10} {line['latency_s_batch1'] * 1e3:9.2f} ms (b1) "
                      f"{line['images_per_s']:9.1f} img/s (b{line['batch']})")
    results["evaluate"] = evaluate_row(args.device, args.evaluate_n, args.evaluate_methods.split(","))
    print(f"evaluate demo {args.evaluate_n} cases: {results['evaluate']['seconds']:.1f} s on {name}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
