"""The evaluation runner: every method x every metric over a data set, per-image CSV, summary with intervals,
plots, resumable. The dashboard's Evaluate page and `python -m xai_core evaluate` both call `run_evaluation`."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xai_core.explainers import get_explainer
from xai_core.explainers.ig import shared_integrals
from xai_core.metrics import (
    auitc,
    complexity,
    iou_at,
    pic,
    pointing_game,
    relevance_mass,
    relevance_rank,
    sparseness,
    summarise,
)
from xai_core.models import ModelHandle, load_model
from xai_core.segx import region_for
from xai_core.training.common import to_model_input

METRIC_GROUPS = {
    "localisation": ("relevance_mass", "relevance_rank", "pointing_game", "iou_at_5", "auitc"),
    "shape": ("complexity", "sparseness"),
    "faithfulness": ("deletion_auc", "insertion_auc", "faithfulness_corr"),
    "pic": ("sic_auc", "aic_auc"),
    "segx": ("segx_iou_at_5",),
    "gaze": ("gaze_kl", "gaze_nss", "gaze_cc", "gaze_sim"),
}
ALL_METRICS = tuple(m for group in METRIC_GROUPS.values() for m in group)
CURVE_SAMPLES = 101  # points kept per SIC/AIC curve (x = 0, 0.01, ..., 1) for the median curves
HIGHER_IS_BETTER = {"gaze_kl": False, "deletion_auc": False, "complexity": False}


@dataclass
class EvalCase:
    """One image with its ground truth, on the model's input grid."""

    case_id: str
    image: np.ndarray  # [S, S] in [0, 1]
    labels: list[str]
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # finding -> bool [S, S]
    fixations: np.ndarray | None = None  # [N, 3] x, y, duration on the [S, S] grid


def phantom_cases(split: str, n: int, seed: int, size: int) -> Iterator[EvalCase]:
    from xai_core.phantom import generate_case

    for index in range(n):
        case = generate_case(split, index, seed=seed, size=size)
        fixations = np.asarray(case.fixations, np.float32)
        gaze = np.stack([fixations[:, 2], fixations[:, 3], (fixations[:, 1] - fixations[:, 0]) / 1000], 1) \
            if len(fixations) else None
        yield EvalCase(case.case_id, case.image, list(case.labels), dict(case.lesions), gaze)


def folder_cases(folder: Path, size: int, n: int | None = None) -> Iterator[EvalCase]:
    """labels.csv (image,labels) + images/ (any supported format), optional masks/<id>_<finding>.png,
    fixations/<id>.csv (REFLACX or MIMIC-EGD) and an NIH BBox_List-style boxes csv (bboxes.csv)."""
    import cv2

    from xai_core.imaging import load_radiograph, read_mask_png
    from xai_core.metrics.gaze import read_fixations
    from xai_core.models.base import InputSpec, preprocess

    with (folder / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    box_file = folder / "bboxes.csv"
    if box_file.is_file():
        with box_file.open(newline="") as handle:
            for row in csv.reader(handle):
                if row and row[0] != "Image Index":
                    boxes.setdefault(Path(row[0]).stem, []).append((row[1], *map(float, row[2:6])))
    for row in rows[:n]:
        image_id = Path(row["image"]).stem
        matches = sorted((folder / "images").glob(f"{image_id}.*"))
        if not matches:
            continue
        radiograph = load_radiograph(matches[0])
        _, crop = preprocess(radiograph, InputSpec(1, size, (0.0, 1.0)))
        square = radiograph.pixels[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size]
        image = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        scale = size / crop.size

        def to_grid(mask: np.ndarray, crop=crop) -> np.ndarray:
            cut = mask[crop.top:crop.top + crop.size, crop.left:crop.left + crop.size].astype(np.uint8)
            return cv2.resize(cut, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)

        labels = [x for x in row["labels"].split("|") if x and x != "No Finding"]
        masks = {}
        for finding in labels:
            path = folder / "masks" / f"{image_id}_{finding}.png"
            if path.is_file():
                masks[finding] = to_grid(read_mask_png(path))
        for finding, x, y, w, h in boxes.get(image_id, []):
            box = np.zeros(radiograph.pixels.shape, bool)
            box[int(y):int(y + h), int(x):int(x + w)] = True
            masks[finding] = masks.get(finding, np.zeros((size, size), bool)) | to_grid(box)
        fixations = None
        gaze_file = folder / "fixations" / f"{image_id}.csv"
        if gaze_file.is_file():
            raw = read_fixations(gaze_file)
            fixations = np.stack([(raw[:, 0] - crop.left) * scale, (raw[:, 1] - crop.top) * scale, raw[:, 2]], 1)
        yield EvalCase(image_id, image.astype(np.float32), labels, masks, fixations)


def cases_from(data: str, n: int, seed: int, size: int) -> Iterator[EvalCase]:
    """`phantom:SPLIT` or a folder path."""
    if data.startswith("phantom:"):
        split = data.split(":", 1)[1]
        if split not in ("train", "val", "test"):
            raise KeyError(f"unknown phantom split '{split}'; use train, val or test")
        return phantom_cases(split, n, seed, size)
    folder = Path(data)
    if not (folder / "labels.csv").is_file():
        raise KeyError(f"--data must be phantom:SPLIT or a folder with labels.csv; '{data}' has none")
    return folder_cases(folder, size, n)


class CaseMemo:
    """What the maps of one case share. Model scores: sigmoid probabilities of every label for model-input images
    [N, S, S], batched and remembered by image content, so images common to several methods and findings (the
    original, the baseline, the blurred image, faithfulness-correlation subsets drawn with a fixed seed) go through
    the model once. PIC bokeh images and their WebP sizes, by kept-pixel set.

    precision 'auto' scores under bfloat16 autocast where the hardware runs it fast (demo on an AMX CPU: 1.7x
    faster, probabilities within 0.005 of float32; tests/test_metrics.py); 'float32' for exact scores."""

    BATCH = 16  # demo on ONNX Runtime, one thread: within 5% per image from batch 1 to 32; 16 keeps memory small

    def __init__(self, handle: ModelHandle, precision: str = "auto") -> None:
        from xai_core.models.base import use_bfloat16

        self.handle = handle
        self.bfloat16 = use_bfloat16(precision, handle.device)
        self.known: dict[bytes, np.ndarray] = {}
        self.model_images = 0
        self.bokehs: dict[bytes, tuple[np.ndarray, int]] = {}

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        import hashlib

        images = np.ascontiguousarray(images, np.float32)
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
        missing = list(dict.fromkeys(k for k in keys if k not in self.known))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            batch = images[[first[k] for k in missing]]
            forward = self.handle.scorer(self.bfloat16)
            with torch.inference_mode():
                for start in range(0, len(batch), self.BATCH):
                    x = torch.from_numpy(batch[start:start + self.BATCH]).unsqueeze(1)
                    probabilities = torch.sigmoid(forward(x)).cpu().numpy()
                    for key, row in zip(missing[start:start + self.BATCH], probabilities, strict=True):
                        self.known[key] = row
            self.model_images += len(missing)
        return np.stack([self.known[k] for k in keys])

    def for_target(self, target: int) -> Callable[[np.ndarray], np.ndarray]:
        """A scorer of one label: images [N, S, S] -> probabilities [N]."""
        return lambda images: self.probabilities(images)[:, target]


def image_metrics(handle: ModelHandle, case: EvalCase, finding: str, relevance: np.ndarray,
                  metrics: set[str], pic_mask: np.ndarray, gaze_sigma: float,
                  memo: CaseMemo | None = None, curves: dict[str, list[float]] | None = None,
                  region: np.ndarray | None = None) -> dict[str, float]:
    """Every requested metric of one map (`memo`: work shared by the maps of one case; `curves`: receives the
    SIC/AIC curves at CURVE_SAMPLES points; `region`: the finding's anatomy, for SegX)."""
    out: dict[str, float] = {}
    target = handle.card.labels.index(finding)
    memo = memo or CaseMemo(handle)
    score = memo.for_target(target)
    mask = case.masks.get(finding)
    a, m = relevance[None], None if mask is None else mask[None]
    if m is not None:
        for name, fn in (("relevance_mass", relevance_mass), ("relevance_rank", relevance_rank),
                         ("pointing_game", pointing_game), ("auitc", auitc)):
            if name in metrics:
                out[name] = float(fn(a, m)[0])
        if "iou_at_5" in metrics:
            out["iou_at_5"] = float(iou_at(a, m, 5.0)[0])
        if "segx_iou_at_5" in metrics and region is not None:
            from xai_core.segx import refine

            out["segx_iou_at_5"] = float(iou_at(refine(relevance, region, "soft")[None], m, 5.0)[0])
    if "complexity" in metrics:
        out["complexity"] = float(complexity(a)[0])
    if "sparseness" in metrics:
        out["sparseness"] = float(sparseness(a)[0])
    x = to_model_input(case.image).astype(np.float32)
    if metrics & {"deletion_auc", "insertion_auc", "faithfulness_corr"}:
        from xai_core.metrics.faithfulness import deletion_insertion, faithfulness_correlation

        baseline = np.zeros_like(x)
        if metrics & {"deletion_auc", "insertion_auc"}:
            out.update(deletion_insertion(x, relevance, score, baseline))
        if "faithfulness_corr" in metrics:
            out["faithfulness_corr"] = faithfulness_correlation(x, relevance, score, baseline)
    if metrics & {"sic_auc", "aic_auc"}:
        image_u8 = (np.clip(case.image, 0, 1) * 255).round().astype(np.uint8)
        def pic_score(images: np.ndarray) -> np.ndarray:
            return score(to_model_input(np.asarray(images, np.float32) / 255.0))

        pic_results = pic.sic_aic(image_u8, relevance, pic_score, pic_mask, handle.card.thresholds.get(finding, 0.5),
                                  cache=memo.bokehs)
        for kind, curve in pic_results.items():
            if f"{kind}_auc" in metrics:
                out[f"{kind}_auc"] = float("nan") if isinstance(curve, Exception) else curve.auc
                if curves is not None and not isinstance(curve, Exception):
                    step = (len(curve.curve_y) - 1) // (CURVE_SAMPLES - 1)
                    curves[kind] = [round(float(y), 4) for y in curve.curve_y[::step]]
    if case.fixations is not None and metrics & set(METRIC_GROUPS["gaze"]):
        from xai_core.metrics.gaze import cc, gaze_heatmap, kl_divergence, nss, sim

        heat = gaze_heatmap(case.fixations, relevance.shape, gaze_sigma)
        scores = {"gaze_kl": kl_divergence(heat, relevance), "gaze_nss": nss(relevance, case.fixations),
                  "gaze_cc": cc(heat, relevance), "gaze_sim": sim(heat, relevance)}
        out.update({k: v for k, v in scores.items() if k in metrics})
    return out


def _stable_seed(*parts: object) -> int:
    import hashlib

    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def resolve_metrics(spec: str) -> list[str]:
    """'all', group names and metric names, comma-separated."""
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            chosen += ALL_METRICS
        elif item in METRIC_GROUPS:
            chosen += METRIC_GROUPS[item]
        elif item in ALL_METRICS:
            chosen.append(item)
        else:
            raise KeyError(f"unknown metric '{item}'; use all, a group ({', '.join(METRIC_GROUPS)}) or one of "
                           f"{', '.join(ALL_METRICS)}")
    return list(dict.fromkeys(chosen))


def evaluate_case(handle: ModelHandle, case: EvalCase, methods: list[str], metrics: list[str], *, seed: int = 0,
                  gaze_sigma: float = 6.0, done: set[tuple[str, str, str]] | frozenset = frozenset(),
                  precision: str = "auto", segmenter: ModelHandle | None = None) -> list[dict[str, Any]]:
    """Per-image rows (case_id, finding, method, seconds, metrics..., and "curves": the SIC/AIC curves) of one
    case's positive findings not in
    `done`. Each method explains all of the case's findings in one call, so per-image work is shared, and
    integrals are shared across methods (XRAI's low-baseline IG is `ig`'s when the image reaches the range's low
    end; its `seconds` then exclude that integral).
    `precision`: of the metrics' model scores (see CaseMemo); explainers run at their own defaults. `segmenter`:
    the anatomy model for the SegX metric (SegX IoU@5%: the soft-refined map's top 5% against the lesion)."""
    size = handle.card.input.size
    positives = [f for f in case.labels if f in handle.card.labels]
    x = torch.from_numpy(to_model_input(case.image).astype(np.float32))[None, None].to(handle.device)
    pic_mask = pic.random_mask((size, size), 0.01, seed=_stable_seed(case.case_id, seed))
    memo = CaseMemo(handle, precision)
    anatomy = case_anatomy(segmenter, case.image, size) if segmenter is not None and "segx_iou_at_5" in metrics \
        else None
    rows = []
    with shared_integrals():  # XRAI reuses the `ig` method's integral where they coincide
        for method in methods:
            pending = [f for f in positives if (case.case_id, f, method) not in done]
            if not pending:
                continue
            targets = torch.tensor([handle.card.labels.index(f) for f in pending])
            start = time.perf_counter()
            maps = get_explainer(method).explain(handle, x.expand(len(pending), *x.shape[1:]), targets)
            seconds = (time.perf_counter() - start) / len(pending)
            for finding, relevance in zip(pending, maps.detach().float().cpu().numpy(), strict=True):
                curves: dict[str, list[float]] = {}
                region = None if anatomy is None else region_for(finding, segmenter.card.name, anatomy).mask
                values = image_metrics(handle, case, finding, relevance, set(metrics), pic_mask, gaze_sigma, memo,
                                       curves, region)
                rows.append({"case_id": case.case_id, "finding": finding, "method": method,
                             "seconds": round(seconds, 5), **{m: values.get(m, "") for m in metrics},
                             "curves": curves})
    return rows


def case_anatomy(segmenter: ModelHandle, image: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The segmenter's named masks of a case image ([S, S] in [0, 1]) on the classifier's [size, size] grid."""
    import cv2

    from xai_core.models.segmenters import segment

    side = segmenter.card.input.size
    pixels = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(to_model_input(pixels).astype(np.float32))[None, None]
    masks = {name: m[0].cpu().numpy().astype(np.uint8) for name, m in segment(segmenter, x).items()}
    return {name: cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
            for name, m in masks.items()}


_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Ends this worker process once the evaluate process that started it is gone (killed before it could stop its
    workers, e.g. by SIGTERM): otherwise the worker would wait for cases forever."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _limit_blas_threads(threads: int) -> None:
    """Caps the BLAS pools of numpy and scipy (the PIC interpolation's) at `threads`. Left at one per core, each
    worker's idle BLAS thread spun on the other worker's core (15 s of CPU beside the main thread's 100 s over 4
    cases) and made nothing faster."""
    import importlib

    from threadpoolctl import threadpool_limits

    for module in ("scipy.interpolate", "scipy.spatial"):  # load scipy's BLAS first, so the limit reaches it
        importlib.import_module(module)

    threadpool_limits(limits=threads, user_api="blas")


def _start_worker(parent: int, model: str, device: str, allow_random_weights: bool, threads: int,
                  options: dict[str, Any], segmenter: str | None) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    torch.set_num_threads(threads)
    pic.set_threads(threads)
    _limit_blas_threads(threads)
    _WORKER["handle"] = load_model(model, device, allow_random_weights=allow_random_weights)
    segmenter_handle = None if segmenter is None else load_model(segmenter, device,
                                                                 allow_random_weights=allow_random_weights)
    _WORKER["options"] = {**options, "segmenter": segmenter_handle}


def _worker_case(case: EvalCase) -> list[dict[str, Any]]:
    return evaluate_case(_WORKER["handle"], case, **_WORKER["options"])


# Below this many cases, starting more processes (each imports torch and loads the models, ~10 s) costs more than
# it gains.
MIN_CASES_PER_EXTRA_WORKER = 8


def default_workers(device: str, n_cases: int) -> int:
    """Processes for `evaluate`: one per core on CPU, up to 8 (explainers, bokeh images and WebP encoding are
    largely single-threaded, so cases in parallel beat one case on many threads: 200 phantom cases on 2 cores took
    1990 s with 2 processes, 2404 s with 1, float32 IG), one on a GPU and for small runs."""
    if device != "cpu" or n_cases < MIN_CASES_PER_EXTRA_WORKER:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def run_evaluation(model: str, data: str, n: int, methods: list[str], metrics: list[str], out: Path, *,
                   seed: int = 0, device: str | None = None, gaze_sigma: float = 6.0, progress: bool = True,
                   on_progress: Callable[[int, int], None] | None = None,
                   allow_random_weights: bool = False, workers: int = 1, precision: str = "auto",
                   segmenter: str = "demo-anatomy") -> dict[str, Any]:
    """Evaluate `methods` on the positive findings of `n` cases, over `workers` processes (0: one per core);
    resumes from `out/per_image.csv`."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from xai_core.engine import pick_device
    from xai_core.models.base import use_bfloat16

    for method in methods:
        get_explainer(method)
    chosen = pick_device(device)
    handle = load_model(model, chosen, allow_random_weights=allow_random_weights)
    scoring_bfloat16 = use_bfloat16(precision, handle.device)  # checks `precision` before any work
    workers = default_workers(chosen.type, n) if workers == 0 else workers
    size = handle.card.input.size
    out.mkdir(parents=True, exist_ok=True)
    table = out / "per_image.csv"
    curve_file = out / "pic_curves.jsonl"
    columns = ["case_id", "finding", "method", "seconds", *metrics]
    done: set[tuple[str, str, str]] = set()
    if table.is_file():
        with table.open(newline="") as handle_csv:
            reader = csv.DictReader(handle_csv)
            if reader.fieldnames != columns:
                raise KeyError(f"{table} was written with other metrics ({reader.fieldnames}); use another --out")
            done = {(r["case_id"], r["finding"], r["method"]) for r in reader}
    options = {"methods": methods, "metrics": metrics, "seed": seed, "gaze_sigma": gaze_sigma, "done": done,
               "precision": precision}
    segmenter_name = segmenter if "segx_iou_at_5" in metrics else None
    segmenter_handle = None if segmenter_name is None else load_model(segmenter_name, chosen,
                                                                      allow_random_weights=allow_random_weights)
    new_file = not table.is_file()
    skipped_no_positive = 0
    pool = None
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker,
                                   initargs=(os.getpid(), model, str(chosen), allow_random_weights, threads, options,
                                             segmenter_name))
    try:
        with table.open("a", newline="") as sink, curve_file.open("a") as curve_sink:
            writer = csv.DictWriter(sink, columns)
            if new_file:
                writer.writeheader()
            bar = tqdm(total=n, desc=f"evaluate {model}", unit="case", disable=not progress)
            finished = 0

            def write(rows: list[dict[str, Any]]) -> None:
                nonlocal finished
                for row in rows:
                    for kind, curve in row.pop("curves").items():
                        curve_sink.write(json.dumps({"case_id": row["case_id"], "finding": row["finding"],
                                                     "method": row["method"], "kind": kind, "y": curve}) + "\n")
                curve_sink.flush()
                writer.writerows(rows)
                sink.flush()
                finished += 1
                bar.update(1)
                if on_progress:
                    on_progress(finished, n)

            in_flight: deque = deque()  # bounded, so a large folder is never held in memory at once
            for case in cases_from(data, n, seed, size):
                if not any(f in handle.card.labels for f in case.labels):
                    skipped_no_positive += 1
                if pool is None:
                    write(evaluate_case(handle, case, **options, segmenter=segmenter_handle))
                    continue
                in_flight.append(pool.submit(_worker_case, case))
                while len(in_flight) > 2 * workers or (in_flight and in_flight[0].done()):
                    write(in_flight.popleft().result())
            while in_flight:
                write(in_flight.popleft().result())
            bar.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    summary = summarise_table(table, methods, metrics)
    summary_doc = {"model": model, "data": data, "n_cases": n, "seed": seed, "workers": workers,
                   "segmenter": segmenter_name,
                   "scoring_bfloat16": scoring_bfloat16,
                   "cases_without_positives": skipped_no_positive, "summary": summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    curves = median_curves(curve_file, methods)
    summary_doc["pic_median_curves"] = {m: {k: {key: v for key, v in c.items() if key != "y"} for k, c in kinds.items()}
                                        for m, kinds in curves.items()}
    (out / "pic_curves.json").write_text(json.dumps(curves) + "\n")
    (out / "run.json").write_text(json.dumps(summary_doc, indent=2) + "\n")
    write_plots(table, methods, metrics, out)
    write_curve_plots(curves, out)
    return summary


def median_curves(curve_file: Path, methods: list[str], *, n_boot: int = 1000, seed: int = 0
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """PIC aggregated as the spec asks: per method and kind (sic, aic), the pointwise median of the per-image
    curves, its AUC with a bootstrap 95% interval over images, n, and the curve itself ("y", CURVE_SAMPLES points
    on x = 0..1)."""
    found: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = {}
    if curve_file.is_file():
        for line in curve_file.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                key = (record["method"], record["kind"])
                found.setdefault(key, {})[(record["case_id"], record["finding"])] = record["y"]  # resumes: last wins
    x = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        for kind in ("sic", "aic"):
            ys = np.array(list(found.get((method, kind), {}).values()), np.float64)
            if not len(ys):
                continue
            median = np.median(ys, axis=0)
            rng = np.random.default_rng(seed)
            boots = [np.trapezoid(np.median(ys[rng.integers(0, len(ys), len(ys))], axis=0), x)
                     for _ in range(n_boot)]
            out.setdefault(method, {})[kind] = {
                "median_curve_auc": float(np.trapezoid(median, x)), "ci_low": float(np.quantile(boots, 0.025)),
                "ci_high": float(np.quantile(boots, 0.975)), "n": len(ys), "y": [round(float(v), 4) for v in median]}
    return out


def curve_figure(curves: dict[str, dict[str, dict[str, Any]]]):
    """A plotly figure of the median SIC and AIC curves, one line per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    figure = make_subplots(rows=1, cols=2, subplot_titles=["SIC (median curve)", "AIC (median curve)"])
    for col, kind in enumerate(("sic", "aic"), start=1):
        for method, kinds in curves.items():
            if kind in kinds:
                c = kinds[kind]
                figure.add_trace(go.Scatter(x=x, y=c["y"], mode="lines", legendgroup=method, showlegend=col == 1,
                                            name=f"{method} (AUC {c['median_curve_auc']:.3f}, n={c['n']})"),
                                 row=1, col=col)
        figure.update_xaxes(title_text="normalised information (WebP size)", range=[0, 1], row=1, col=col)
        figure.update_yaxes(title_text="normalised score" if kind == "sic" else "still predicted", range=[0, 1.02],
                            row=1, col=col)
    figure.update_layout(height=380, title="Performance information curves")
    return figure


def write_curve_plots(curves: dict[str, dict[str, dict[str, Any]]], out: Path) -> None:
    """Median SIC/AIC curves: pic_curves.html (plotly) and pic_curves.png (matplotlib)."""
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve_figure(curves).write_html(out / "pic_curves.html", include_plotlyjs=True)
    x = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, kind in zip(axes, ("sic", "aic"), strict=True):
        for method, kinds in curves.items():
            if kind in kinds:
                axis.plot(x, kinds[kind]["y"], label=f"{method} ({kinds[kind]['median_curve_auc']:.3f})")
        axis.set_title(f"{kind.upper()} (median curve, AUC in legend)")
        axis.set_xlabel("normalised information (WebP size)")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        if axis.lines:
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "no image passed the skip rules", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out / "pic_curves.png", dpi=90)
    plt.close(fig)


def summarise_table(table: Path, methods: list[str], metrics: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {metric: {"mean", "ci_low", "ci_high", "n"}}} from the per-image CSV (for SIC/AIC: the mean of
    per-image AUCs; the curves themselves are not stored)."""
    import pandas as pd

    frame = pd.read_csv(table)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        rows = frame[frame["method"] == method]
        out[method] = {m: summarise(pd.to_numeric(rows[m], errors="coerce").to_numpy()) for m in
                       [*metrics, "seconds"] if m in rows}
    return out


def box_figure(frame, methods: list[str], metrics: list[str]):
    """A plotly figure of per-image box plots, one panel per metric with values."""
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shown = [m for m in metrics if m in frame and pd.to_numeric(frame[m], errors="coerce").notna().any()]
    cols = max(1, min(3, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=shown or ["no values"])
    for k, metric in enumerate(shown):
        r, c = divmod(k, cols)
        for method in methods:
            values = pd.to_numeric(frame[frame["method"] == method][metric], errors="coerce").dropna()
            figure.add_trace(go.Box(y=values, name=method, showlegend=False), row=r + 1, col=c + 1)
    figure.update_layout(height=320 * rows, title="Per-image metrics by method")
    return figure


def write_plots(table: Path, methods: list[str], metrics: list[str], out: Path) -> None:
    """Box plots per metric: interactive HTML (plotly) and a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(table)
    shown = [m for m in metrics if pd.to_numeric(frame[m], errors="coerce").notna().any()]
    if not shown:
        return
    box_figure(frame, methods, shown).write_html(out / "metrics.html", include_plotlyjs=True)  # works offline
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for k, metric in enumerate(shown):
        r, c = divmod(k, cols)
        data = [pd.to_numeric(frame[frame["method"] == m][metric], errors="coerce").dropna() for m in methods]
        axes[r][c].boxplot([d.to_numpy() if len(d) else [np.nan] for d in data], tick_labels=methods)
        axes[r][c].set_title(metric)
        axes[r][c].tick_params(axis="x", rotation=45)
    for k in range(len(shown), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=90)
    plt.close(fig)


def print_summary(summary: dict[str, dict[str, dict[str, float]]], metrics: list[str]) -> str:
    """A plain-text table: methods x metrics, mean [95% interval]."""
    header = f"{'method':<10}" + "".join(f"{m:>24}" for m in metrics)
    lines = [header]
    for method, values in summary.items():
        cells = []
        for m in metrics:
            v = values.get(m)
            cells.append(f"{v['mean']:>8.3f} [{v['ci_low']:.3f},{v['ci_high']:.3f}]" if v and v["n"] else
                         f"{'n/a':>24}")
        lines.append(f"{method:<10}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)
