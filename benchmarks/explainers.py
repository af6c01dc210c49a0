"""Explainer speed against the peers, same process, same inputs: seconds per image (batch 1) and images/s
(batch N), with the agreement of the maps (correlation; top-10% IoU for XRAI).

    python benchmarks/explainers.py [--models demo,xrv-densenet121-all] [--batch 32] [--methods ...] [--json OUT]
    python -m xai_core bench explainers --json
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.explainers import get_explainer
from xai_core.models import ModelHandle, load_model
from xai_core.phantom import generate_case
from xai_core.training.common import to_model_input

SLOW_BATCH = 2  # batch used for the throughput of slow methods (Score-CAM, IG, XRAI) on CPU


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom test cases with at least one finding, and the index of their first finding."""
    images, targets = [], []
    i = 0
    while len(images) < n:
        case = generate_case("test", i, size=224)
        i += 1
        if case.labels:
            images.append(to_model_input(case.image))
            targets.append(["Atelectasis", "Cardiomegaly", "Consolidation", "Effusion", "Mass", "Nodule",
                            "Pneumothorax"].index(case.labels[0]))
    return torch.from_numpy(np.stack(images)).unsqueeze(1), torch.tensor(targets)


# Fast methods take milliseconds: a first call after loading can take 4x the steady state (NEMt: 95 vs 24 ms) and
# single calls vary by +-15% on a 2-core machine, so they get more warm-up calls and repeats (medians).
FAST_WARMUPS = 3
FAST_REPEATS = 15


def timed(fn: Callable[[], np.ndarray], repeats: int, warmups: int = 1) -> tuple[float, np.ndarray]:
    """Median seconds over `repeats` calls (after `warmups` calls) and the last output."""
    for _ in range(warmups):
        out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def _pgc(kind: str, handle: ModelHandle) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run(x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        with getattr(pytorch_grad_cam, kind)(model=handle.module, target_layers=[handle.layer(handle.card.cam_layer)]
                                             ) as cam:
            return cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(int(i)) for i in t])
    return run


def _captum_layer_gradcam(handle: ModelHandle) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    from captum.attr import LayerAttribution, LayerGradCam

    def run(x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        attribution = LayerGradCam(handle.module, handle.layer(handle.card.cam_layer)).attribute(x, target=t)
        return LayerAttribution.interpolate(torch.relu(attribution), x.shape[-2:], "bilinear")[:, 0].detach().numpy()
    return run


def _captum_ig(handle: ModelHandle, steps: int, method: str) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    from captum.attr import IntegratedGradients

    def run(x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        baseline = torch.full_like(x, handle.card.input.value_range[0])
        attribution = IntegratedGradients(handle.module).attribute(x, baselines=baseline, target=t, n_steps=steps,
                                                                   method=method, internal_batch_size=32)
        return attribution.abs().sum(1).detach().numpy()
    return run


def _saliency_xrai(handle: ModelHandle, batch_size: int = 1) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """saliency's XRAI; its defaults are 100 IG steps per baseline and batch_size=1."""
    import saliency.core as saliency

    def run(x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        maps = []
        for image, target in zip(x, t, strict=True):
            def call_model(images, call_model_args=None, expected_keys=None, target=int(target)):
                batch = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2).requires_grad_(True)
                (grads,) = torch.autograd.grad(handle.module(batch)[:, target].sum(), batch)
                return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}
            maps.append(saliency.XRAI().GetMask(image.permute(1, 2, 0).numpy(), call_model,
                                                  batch_size=batch_size))
        return np.stack(maps)
    return run


def peers(method: str, handle: ModelHandle) -> dict[str, Callable[[torch.Tensor, torch.Tensor], np.ndarray]]:
    table = {
        "gradcam": {"pytorch-grad-cam GradCAM": _pgc("GradCAM", handle),
                    "captum LayerGradCam": _captum_layer_gradcam(handle)},
        "gradcampp": {"pytorch-grad-cam GradCAM++": _pgc("GradCAMPlusPlus", handle)},
        "scorecam": {"pytorch-grad-cam ScoreCAM (its default batch 16, as ours)": _pgc("ScoreCAM", handle)},
        "ig": {"captum IntegratedGradients (32 steps, same rule)": _captum_ig(handle, 32, "riemann_right")},
        "xrai": {"saliency XRAI (its defaults: batch 1)": _saliency_xrai(handle),
                 "saliency XRAI (batch 32)": _saliency_xrai(handle, 32)},
    }
    return table.get(method, {})


def agreement(method: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    a, b = ours.ravel(), theirs.ravel()
    if method == "xrai":
        top_a, top_b = a >= np.quantile(a, 0.9), b >= np.quantile(b, 0.9)
        return float((top_a & top_b).sum() / (top_a | top_b).sum())
    return float(np.corrcoef(a, b)[0, 1])


def _ours(explainer, handle: ModelHandle, x: torch.Tensor, t: torch.Tensor, **params) -> np.ndarray:
    return explainer.explain(handle, x, t, **params).detach().numpy()


def variants(method: str) -> list[dict]:
    """Our settings to time per method: the defaults, plus the documented fast modes."""
    from xai_core.models.base import bfloat16_supported

    exact = [{"precision": "float32"}] if bfloat16_supported(torch.device("cpu")) else []  # 'auto' is bfloat16 here
    if method == "scorecam":
        return [{}, *exact, {"top_k": 128}]
    if method in ("ig", "xrai"):
        return [{}, *exact]
    return [{}]


def run(models: list[str], methods: list[str], batch: int, repeats: int) -> list[dict]:
    torch.set_grad_enabled(True)
    rows = []
    x, t = inputs(batch)
    for model in models:
        handle = load_model(model, allow_random_weights=True)
        for method in methods:
            explainer = get_explainer(method)
            n = batch if explainer.cost == "fast" else min(batch, SLOW_BATCH)
            reps = max(repeats, FAST_REPEATS) if explainer.cost == "fast" else 1
            peer_runs: dict[str, tuple[float, float, np.ndarray]] = {}
            for params in variants(method):
                warm = FAST_WARMUPS if explainer.cost == "fast" else 1
                ours_1, _ = timed(functools.partial(_ours, explainer, handle, x[:1], t[:1], **params), reps, warm)
                ours_n, map_n = timed(functools.partial(_ours, explainer, handle, x[:n], t[:n], **params), reps, warm)
                label = method + "".join(f"[{k}={v}]" for k, v in params.items())
                row = {"model": model, "method": label, "params": params, "ours_s_per_image": ours_1, "batch": n,
                       "ours_images_per_s": n / ours_n, "peers": []}
                for name, peer in peers(method, handle).items():
                    if name not in peer_runs:  # each peer is timed once and compared with every variant
                        peer_1, _ = timed(functools.partial(peer, x[:1], t[:1]), reps, warm)
                        peer_n, peer_map_n = timed(functools.partial(peer, x[:n], t[:n]), reps, warm)
                        peer_runs[name] = (peer_1, peer_n, peer_map_n)
                    peer_1, peer_n, peer_map_n = peer_runs[name]
                    agree = [agreement(method, a, b) for a, b in zip(map_n, peer_map_n, strict=True)]
                    row["peers"].append({"peer": name, "peer_s_per_image": peer_1, "peer_images_per_s": n / peer_n,
                                         "speedup_batch1": peer_1 / ours_1, "speedup_batchN": peer_n / ours_n,
                                         "agreement": float(np.mean(agree))})
                rows.append(row)
                print_row(row)
    return rows


def print_row(row: dict) -> None:
    head = (f"{row['model']:<22}{row['method']:<28}{row['ours_s_per_image']:>9.3f} s/img "
            f"{row['ours_images_per_s']:>8.2f} img/s (b{row['batch']})")
    if not row["peers"]:
        print(head)
    for peer in row["peers"]:
        print(f"{head}  | {peer['peer']:<38}{peer['peer_s_per_image']:>9.3f} s/img  ours/peer speed "
              f"{peer['speedup_batch1']:>5.2f}x (b1) {peer['speedup_batchN']:>5.2f}x (b{row['batch']})  "
              f"agreement {peer['agreement']:.3f}")


def xrai_agreement(model: str, n: int) -> dict:
    """Top-10% region IoU of our XRAI, at its defaults and at other rules and precisions of the same number of
    steps, against XRAI at the reference's IG settings (100 evenly spaced float32 steps including both ends; equal
    to saliency's maps: tests/test_explainers.py), over n phantom test positives."""
    handle = load_model(model, allow_random_weights=True)
    explainer = get_explainer("xrai")
    x, t = inputs(n)
    reference = explainer.explain(handle, x, t, steps=100, rule="linspace", precision="float32").detach().numpy()
    out = {"model": model, "images": n, "settings": {}}
    steps = explainer.defaults["steps"]
    settings = [(explainer.defaults["rule"], explainer.defaults["precision"]),
                *((rule, "float32") for rule in ("riemann_right", "gausslegendre", "trapezoid"))]
    for rule, precision in settings:
        start = time.perf_counter()
        maps = explainer.explain(handle, x, t, steps=steps, rule=rule, precision=precision).detach().numpy()
        seconds = (time.perf_counter() - start) / n
        iou = [agreement("xrai", a, b) for a, b in zip(maps, reference, strict=True)]
        out["settings"][f"{rule}/{precision}"] = {"mean_iou": float(np.mean(iou)), "min_iou": float(np.min(iou)),
                                                  "iou": iou, "seconds_per_image": seconds}
        default = " (default)" if (rule, precision) == settings[0] else ""
        print(f"{model:<22}xrai {steps} {rule} steps, precision {precision}{default}, {seconds:.2f} s/img, vs "
              f"100-step reference: top-10% IoU mean {np.mean(iou):.3f}, min {np.min(iou):.3f} over {n} images")
    return out


def nemt_costs(model: str, batch: int, repeats: int) -> dict:
    """NEMt against the classifier's forward: from pixels (the registered method), and the decoder alone (after a
    predict). The reference forward is the product's (`ModelHandle.scorer`: ONNX Runtime on a CPU, what predict
    runs); PyTorch eager's is printed beside it."""
    from xai_core.nemt import explanation_from_taps, handle_pyramid, load_decoder

    handle = load_model(model, allow_random_weights=True)
    decoder = load_decoder(handle)
    nemt = get_explainer("nemt")
    scorer = handle.scorer()
    x, t = inputs(batch)
    with torch.inference_mode():
        _, taps1 = handle_pyramid(handle, x[:1])
        _, taps_n = handle_pyramid(handle, x)

        out = {"model": model}
        reps = max(repeats, FAST_REPEATS)
        for n, taps in ((1, taps1), (batch, taps_n)):
            f, _ = timed(lambda n=n: scorer(x[:n]), reps, FAST_WARMUPS)
            e, _ = timed(lambda n=n: handle.module(x[:n]), reps, FAST_WARMUPS)
            p, _ = timed(lambda n=n: nemt.explain(handle, x[:n], t[:n]), reps, FAST_WARMUPS)
            d, _ = timed(lambda n=n, taps=taps: explanation_from_taps(decoder, taps, x[:n], t[:n]), reps,
                         FAST_WARMUPS)
            out[f"batch{n}"] = {"forward_s": f, "eager_forward_s": e, "nemt_from_pixels_s": p,
                                "nemt_after_predict_s": d, "from_pixels_over_forward": p / f,
                                "from_pixels_over_eager_forward": p / e, "images_per_s_from_pixels": n / p}
    b1 = out["batch1"]
    print(f"{model:<22}nemt      {b1['nemt_from_pixels_s']:>9.4f} s/img from pixels = "
          f"{b1['from_pixels_over_forward']:.2f}x the product's forward ({b1['forward_s']:.4f} s; PyTorch eager "
          f"{b1['eager_forward_s']:.4f} s); decoder alone after predict {b1['nemt_after_predict_s']:.4f} s; "
          f"batch {batch}: {out[f'batch{batch}']['images_per_s_from_pixels']:.1f} img/s")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,xrv-densenet121-all")
    parser.add_argument("--methods", default="gradcam,gradcampp,scorecam,ig,xrai,nemt,random")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xrai-agreement", type=int, default=0, metavar="N",
                        help="also measure XRAI's region agreement with the reference's IG settings on N images")
    add_json_option(parser, "explainers")
    args = parser.parse_args(argv)
    rows = run(args.models.split(","), args.methods.split(","), args.batch, args.repeats)
    agreements = [xrai_agreement(m, args.xrai_agreement) for m in args.models.split(",")] if args.xrai_agreement \
        else []
    nemt = [nemt_costs(m, args.batch, args.repeats) for m in args.models.split(",")] if "nemt" in args.methods else []
    write_json(args.json, {"device": "cpu", "threads": torch.get_num_threads(), "rows": rows,
                                         "nemt": nemt, "xrai_agreement": agreements})


if __name__ == "__main__":
    main()
