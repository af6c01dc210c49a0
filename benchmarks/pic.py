"""PIC (SIC) evaluation time per image and map, ours vs `saliency.metrics.pic`, same inputs, same run.

    python benchmarks/pic.py [--n 6] [--size 224] [--threads N] [--json [OUT]]
    python -m xai_core bench pic --json

The score function is a fixed image-detail 'model' (no network), so both sides pay the same for it and the
comparison isolates what differs: bokeh images (interpolation), information estimate and batching. Maps: Grad-CAM
of `demo` (blob-shaped, the common case) and the random control (scattered pixels, our worst case). The reference
runs on one thread; ours builds a map's bokeh images on `--threads` threads (default: every core this process may
use; `--threads 1` for the like-for-like figure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.explainers import get_explainer
from xai_core.metrics.pic import THRESHOLDS, bokeh, pic_curve, random_mask
from xai_core.models import load_model
from xai_core.phantom import FINDINGS, generate_case
from xai_core.training.common import to_model_input


def detail_score(weights: np.ndarray, mask: np.ndarray):
    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float64)
        detail = np.abs(images - np.stack([bokeh(i.astype(np.uint8), mask) for i in images]))
        return 1 - np.exp(-(detail * weights).sum((1, 2)) / (50.0 * weights.sum() / 1000))
    return predict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="threads for our bokeh images (default: all cores)")
    add_json_option(parser, "pic")
    args = parser.parse_args(argv)
    from saliency.metrics import pic as reference

    from xai_core.metrics import pic

    if args.threads is not None:
        pic.set_threads(args.threads)
    print(f"our bokeh threads: {pic.threads()}")

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # saliency 0.2.1 calls np.trapz, removed in NumPy 2
    handle = load_model("demo")
    rows = []
    index = 0
    while len(rows) < 2 * args.n:
        case = generate_case("test", index, size=args.size)
        index += 1
        if not case.labels:
            continue
        image = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
        x = torch.from_numpy(to_model_input(image / 255.0).astype(np.float32))[None, None]
        target = torch.tensor([FINDINGS.index(case.labels[0])])
        mask = random_mask(image.shape, 0.01, seed=index)
        weights = case.lesions[case.labels[0]].astype(np.float64) + 0.05
        predict = detail_score(weights, mask)
        for method in ("gradcam", "random"):
            saliency_map = get_explainer(method).explain(handle, x, target)[0].detach().numpy()
            start = time.perf_counter()
            ours = pic_curve(image, saliency_map, predict, mask, min_score=0.0)
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            theirs = reference.compute_pic_metric(image, saliency_map, mask, predict, list(THRESHOLDS),
                                                  min_pred_value=0.0)
            theirs_s = time.perf_counter() - start
            rows.append({"case": case.case_id, "method": method, "ours_s": ours_s, "reference_s": theirs_s,
                         "speedup": theirs_s / ours_s, "auc_ours": ours.auc, "auc_reference": float(theirs.auc)})
            r = rows[-1]
            print(f"{r['case']}  {method:<8} ours {ours_s:6.2f} s  reference {theirs_s:6.2f} s  "
                  f"speed-up {r['speedup']:5.1f}x  AUC {r['auc_ours']:.3f} vs {r['auc_reference']:.3f}")
    for method in ("gradcam", "random"):
        sub = [r for r in rows if r["method"] == method]
        print(f"{method:<8} median speed-up {np.median([r['speedup'] for r in sub]):.1f}x, total "
              f"{sum(r['reference_s'] for r in sub) / sum(r['ours_s'] for r in sub):.1f}x, max |AUC difference| "
              f"{max(abs(r['auc_ours'] - r['auc_reference']) for r in sub):.3f}")
    print(f"both maps: total speed-up {sum(r['reference_s'] for r in rows) / sum(r['ours_s'] for r in rows):.1f}x")
    write_json(args.json, {"threads": pic.threads(), "rows": rows})


if __name__ == "__main__":
    main()
