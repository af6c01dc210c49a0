"""The evaluation runner: every method x every registered metric over a data set, locally or over worker processes;
per-image CSV, per-image SIC/AIC curves, summary with intervals, plots, resumable. The dashboard's Evaluate page and
`python -m xai_core evaluate` both call `run_evaluation`."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from xai_core import baselines
from xai_core import removal as removal_ops
from xai_core.errors import InputError
from xai_core.evaluation.registry import PIC_KINDS, REMOVAL_METRICS, MapContext, compute_metrics
from xai_core.evaluation.reports import (
    median_curves,
    method_summaries,
    summary_document,
    write_curve_plots,
    write_plots,
)
from xai_core.evaluation.sources import EvalCase, cases_from
from xai_core.explainers import get_explainer
from xai_core.explainers.ig import shared_integrals
from xai_core.files import strict_json
from xai_core.metrics import pic
from xai_core.metrics.gaze import DEFAULT_GAZE_KERNEL, GazeKernel, resolve_gaze_kernel
from xai_core.models import ModelHandle, load_model
from xai_core.models.base import use_bfloat16
from xai_core.models.cards import to_model_range
from xai_core.models.segmenters import segment
from xai_core.phantom import GAZE_VERSION, PHANTOM_VERSION
from xai_core.runtime import pick_device
from xai_core.segx import region_for
from xai_core.workers import check_backend, start_workers

DEFAULT_REMOVAL = removal_ops.DEFAULT_METHOD
BASELINE_CHECK_N = 100  # held-out phantom cases of the baseline self-check in `run_evaluation`


def baseline_self_check(handle: ModelHandle, removal: str, n: int, metrics: list[str]) -> dict[str, Any] | None:
    """The model's reading of the fully removed baseline of `removal`, per finding (xai_core.baselines), and the
    invalid (finding, metric) pairs it implies: {metric: [findings]} for the removal metrics among `metrics`. None
    when no removal metric is asked for or n is 0."""
    wanted = [m for m in metrics if m in REMOVAL_METRICS]
    if not wanted or n <= 0:
        return None
    recipe = baselines.METHOD_BASELINE.get(removal, removal)
    result = baselines.check_baselines(handle, n=n, recipes=[recipe])
    entry = result["recipes"][recipe]
    findings = baselines.invalid_findings(result, removal)
    return {"removal": removal_ops.describe(removal), "recipe": recipe, "description": entry["description"],
            "data": result["data"], "bar": entry["bar"], "pushed": entry["pushed"],
            "mean_probability_negatives": entry["mean_probability_negatives"],
            "probability": entry.get("probability"), "reads_positive": findings, "unchecked": result["unchecked"],
            "invalid": {metric: findings for metric in wanted}}


SETTINGS_FILE = "settings.json"


def run_settings(handle: ModelHandle, data: str, seed: int, removal: str, kernel: Any, precision: str
                 ) -> dict[str, Any]:
    """What decides the values of a results folder's rows besides the method and metric (a resumed run must match):
    the model and its weights, the data, the seed, the removal operator, the gaze kernel, the precision."""
    return {"model": handle.card.name, "weights": handle.card.provenance.get("weights_sha256"),
            "data": data, "seed": seed, "removal": removal_ops.describe(removal), "gaze_kernel": str(kernel),
            "precision": precision, "phantom_version": PHANTOM_VERSION,
            "gaze_version": GAZE_VERSION}


def check_resumable_settings(out: Path, settings: dict[str, Any], table: Path) -> None:
    """Record a new folder's settings; refuse to resume one whose rows were computed with other settings (or
    before settings were recorded), so that no summary mixes rows of two removal operators or models."""
    path = out / SETTINGS_FILE
    if path.is_file() and table.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        if changed:
            detail = "; ".join(f"{k}: {stored.get(k)} -> {settings[k]}" for k in changed)
            raise InputError(f"{out} holds results computed with other settings ({detail}); use another --out")
        return
    if table.is_file():
        raise InputError(f"{out} holds results from a version that did not record its settings (removal operator, "
                         f"gaze kernel, weights); use another --out")
    write_strict_json(path, settings)


class CaseMemo:
    """What the maps of one case share. Model scores: sigmoid probabilities of every label for pixel images
    [N, S, S] in [0, 1] (scaled to the model card's input by `to_model_range`), batched and remembered by image
    content, so images common to several methods and findings (the original, the baseline, the blurred image,
    faithfulness-correlation subsets drawn with a fixed seed) go through the model once. PIC bokeh images and their
    WebP sizes, by kept-pixel set.

    precision 'auto' scores under bfloat16 autocast where the hardware runs it fast (probabilities within 0.01 of
    float32; tests/test_metrics.py); 'float32' for exact scores."""

    BATCH = 16  # per-image cost is flat from batch 1 to 32 on ONNX Runtime; 16 keeps memory small

    def __init__(self, handle: ModelHandle, precision: str = "auto") -> None:
        self.handle = handle
        self.bfloat16 = use_bfloat16(precision, handle.device)
        self.known: dict[bytes, np.ndarray] = {}
        self.model_images = 0
        self.bokehs: dict[bytes, tuple[np.ndarray, int]] = {}
        self.subsets: dict[str, np.ndarray] = {}

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, n_labels] of pixel images [N, S, S] in [0, 1]."""
        images = np.ascontiguousarray(images, np.float32)
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
        missing = list(dict.fromkeys(k for k in keys if k not in self.known))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            batch = images[[first[k] for k in missing]]
            forward = self.handle.scorer(self.bfloat16)
            with torch.inference_mode():
                for start in range(0, len(batch), self.BATCH):
                    x = torch.from_numpy(to_model_range(batch[start:start + self.BATCH], self.handle.card.input))
                    probabilities = torch.sigmoid(forward(x)).cpu().numpy()
                    for key, row in zip(missing[start:start + self.BATCH], probabilities, strict=True):
                        self.known[key] = row
            self.model_images += len(missing)
        return np.stack([self.known[k] for k in keys])

    def for_target(self, target: int) -> Callable[[np.ndarray], np.ndarray]:
        """A scorer of one label: pixel images [N, S, S] -> probabilities [N]."""
        return lambda images: self.probabilities(images)[:, target]


def image_metrics(handle: ModelHandle, case: EvalCase, finding: str, relevance: np.ndarray,
                  metrics: set[str] | list[str], pic_mask: np.ndarray, gaze_kernel: GazeKernel | str | float,
                  memo: CaseMemo | None = None, curves: dict[str, list[float]] | None = None,
                  region: np.ndarray | None = None, removal: str = DEFAULT_REMOVAL,
                  pic_outcomes: dict[str, str] | None = None) -> dict[str, float]:
    """The requested registered metrics of one map of a case's finding (`memo`: work shared by the maps of one
    case; `curves`: receives the SIC/AIC curves; `region`: the finding's anatomy, for SegX; `removal`: how the
    faithfulness metrics remove pixels, a method of xai_core.removal; `pic_outcomes`: receives, per requested PIC
    kind, "kept" or the skip rule that dropped the image, see MapContext.pic_outcome). Metrics whose inputs
    the case lacks (no lesion mask, no fixations, no region) are left out."""
    memo = memo or CaseMemo(handle)
    context = MapContext(
        relevance=np.asarray(relevance), image=case.image, mask=case.masks.get(finding),
        score=memo.for_target(handle.card.labels.index(finding)),
        decision_threshold=handle.card.thresholds.get(finding, 0.5), fixations=case.fixations, region=region,
        pic_mask=pic_mask, gaze_kernel=gaze_kernel, gaze_source_px=case.source_px, bokeh_cache=memo.bokehs,
        subset_cache=memo.subsets,
        curves=curves if curves is not None else {}, removal=removal)
    values = compute_metrics(metrics, context)
    if pic_outcomes is not None:
        pic_outcomes.update({kind: context.pic_outcome(kind) for kind in PIC_KINDS if f"{kind}_auc" in metrics})
    return values


def pic_skip_columns(metrics: list[str]) -> list[str]:
    """The per-image CSV's PIC outcome columns ("sic_skip", "aic_skip") of the requested PIC metrics: "kept", the
    skip rule that dropped the image (pic.SKIP_RULES) or "empty_map"."""
    return [f"{kind}_skip" for kind in PIC_KINDS if f"{kind}_auc" in metrics]


def table_columns(metrics: list[str]) -> list[str]:
    """The per-image CSV's columns for `metrics`."""
    return ["case_id", "finding", "method", "seconds", *metrics, *pic_skip_columns(metrics)]


def write_strict_json(path: Path, value: Any) -> None:
    """`value` as strict JSON (NaN and infinities as null: JSON has no NaN) in `path`."""
    path.write_text(strict_json(value) + "\n")


def _stable_seed(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def case_anatomy(segmenter: ModelHandle, image: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The segmenter's named masks of a case image ([S, S] in [0, 1]) on the classifier's [size, size] grid."""
    side = segmenter.card.input.size
    pixels = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(to_model_range(pixels, segmenter.card.input))[None]
    masks = {name: m[0].cpu().numpy().astype(np.uint8) for name, m in segment(segmenter, x).items()}
    return {name: cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
            for name, m in masks.items()}


def evaluate_case(handle: ModelHandle, case: EvalCase, methods: list[str], metrics: list[str], *, seed: int = 0,
                  gaze_kernel: GazeKernel | str = DEFAULT_GAZE_KERNEL,
                  done: set[tuple[str, str, str]] | frozenset = frozenset(),
                  precision: str = "auto", segmenter: ModelHandle | None = None,
                  removal: str = DEFAULT_REMOVAL) -> list[dict[str, Any]]:
    """Per-image rows (case_id, finding, method, seconds, metrics..., and "curves": the SIC/AIC curves) of one
    case's positive findings not in `done`. Each method explains all of the case's findings in one call, so
    per-image work is shared, and integrals are shared across methods (XRAI's low-baseline IG is `ig`'s when the
    image reaches the range's low end; its `seconds` then exclude that integral).
    `precision`: of the metrics' model scores (see CaseMemo); explainers run at their own defaults. `segmenter`:
    the anatomy model for the SegX metric (SegX IoU@5%: the soft-refined map's top 5% against the lesion)."""
    size = handle.card.input.size
    positives = [f for f in case.labels if f in handle.card.labels]
    x = torch.from_numpy(to_model_range(case.image, handle.card.input))[None].to(handle.device)
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
                outcomes: dict[str, str] = {}
                region = None if anatomy is None else region_for(finding, segmenter.card.name, anatomy).mask
                values = image_metrics(handle, case, finding, relevance, metrics, pic_mask, gaze_kernel, memo,
                                       curves, region, removal, outcomes)
                rows.append({"case_id": case.case_id, "finding": finding, "method": method,
                             "seconds": round(seconds, 5), **{m: values.get(m, "") for m in metrics},
                             **{f"{kind}_skip": outcome for kind, outcome in outcomes.items()},
                             "curves": curves})
    return rows


_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Ends this worker process once the evaluate process that started it is gone (killed before it could stop its
    workers, e.g. by SIGTERM): otherwise the worker would wait for cases forever."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def limit_blas_threads(threads: int) -> None:
    """Caps the BLAS pools of numpy and scipy (the PIC interpolation's) at `threads`. Left at one per core, each
    worker's idle BLAS thread spins on the other workers' cores and makes nothing faster."""
    for module in ("scipy.interpolate", "scipy.spatial"):  # load scipy's BLAS first, so the limit reaches it
        importlib.import_module(module)
    threadpool_limits(limits=threads, user_api="blas")


def _start_worker(parent: int | None, model: str, device: str, allow_random_weights: bool, threads: int,
                  options: dict[str, Any], segmenter: str | None) -> None:
    if parent is not None:  # a local worker; Ray stops its own actors with the job
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    torch.set_num_threads(threads)
    pic.set_threads(threads)
    limit_blas_threads(threads)
    _WORKER["handle"] = load_model(model, device, allow_random_weights=allow_random_weights)
    segmenter_handle = None if segmenter is None else load_model(segmenter, device,
                                                                 allow_random_weights=allow_random_weights)
    _WORKER["options"] = {**options, "segmenter": segmenter_handle}


def _worker_case(case: EvalCase) -> list[dict[str, Any]]:
    return evaluate_case(_WORKER["handle"], case, **_WORKER["options"])


# Below this many cases, starting more processes (each imports torch and loads the models) costs more than it gains.
MIN_CASES_PER_EXTRA_WORKER = 8


def default_workers(device: str, n_cases: int) -> int:
    """Processes for `evaluate`: one per core on CPU, up to 8 (explainers, bokeh images and WebP encoding are
    largely single-threaded, so cases in parallel beat one case on many threads; docs/evaluation.md), one on a GPU
    and for small runs."""
    if device != "cpu" or n_cases < MIN_CASES_PER_EXTRA_WORKER:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def run_evaluation(model: str, data: str, n: int, methods: list[str], metrics: list[str], out: Path, *,
                   seed: int = 0, device: str | None = None, gaze_kernel: GazeKernel | str = DEFAULT_GAZE_KERNEL,
                   progress: bool = True,
                   on_progress: Callable[[int, int], None] | None = None,
                   allow_random_weights: bool = False, workers: int = 1, precision: str = "auto",
                   segmenter: str = "demo-anatomy", removal: str = DEFAULT_REMOVAL,
                   baseline_check_n: int = BASELINE_CHECK_N, backend: str = "local",
                   address: str | None = None) -> dict[str, Any]:
    """Evaluate `methods` on the positive findings of `n` cases, over `workers` processes (0: one per core) of
    `backend` (xai_core.workers: local processes, or Ray actors on a local Ray or the cluster at `address`);
    resumes from `out/per_image.csv`. The files written do not depend on the backend. Writes per_image.csv,
    pic_curves.jsonl, summary.json, pic_curves.json,
    run.json and the plots; returns the summary {method: {metric: {"mean", "ci_low", "ci_high", "n"}}}.

    `removal` (a method of xai_core.removal) is how deletion, insertion and faithfulness correlation remove pixels.
    `gaze_kernel` (a GazeKernel or preset name of xai_core.metrics.gaze; run.json records it) builds the gaze
    heatmaps.
    Before a removal metric is trusted, the baseline self-check (xai_core.baselines, `baseline_check_n` held-out
    phantom cases; 0 skips it) runs the model on the fully removed images: where that baseline reads as positive
    for a finding, the (finding, metric) pairs are invalid, their rows stay in per_image.csv but are left out of the
    metric's mean, and summary.json says so ("invalid_findings" in the metric's entry; run.json: "baseline_check").
    summary.json also holds "by_finding" ({method: {finding: {metric: ...}}}, invalid pairs marked, not left out)
    and "pic_coverage" (positives each PIC skip rule dropped, per finding); it and run.json are strict JSON (null
    where a value is undefined, never NaN).
    """
    for method in methods:
        get_explainer(method)
    check_backend(backend, address)
    chosen = pick_device(device)
    handle = load_model(model, chosen, allow_random_weights=allow_random_weights)
    scoring_bfloat16 = use_bfloat16(precision, handle.device)  # checks `precision` before any work
    if workers == 0 and backend == "local":
        workers = default_workers(chosen.type, n)
    size = handle.card.input.size
    out.mkdir(parents=True, exist_ok=True)
    table = out / "per_image.csv"
    curve_file = out / "pic_curves.jsonl"
    columns = table_columns(metrics)
    done: set[tuple[str, str, str]] = set()
    kernel = resolve_gaze_kernel(gaze_kernel)
    check_resumable_settings(out, run_settings(handle, data, seed, removal, kernel, precision), table)
    if table.is_file():
        with table.open(newline="") as handle_csv:
            reader = csv.DictReader(handle_csv)
            if reader.fieldnames != columns:
                raise InputError(f"{table} was written with other metrics ({reader.fieldnames}); use another --out")
            done = {(r["case_id"], r["finding"], r["method"]) for r in reader}
    options = {"methods": methods, "metrics": metrics, "seed": seed, "gaze_kernel": kernel, "done": done,
               "precision": precision, "removal": removal}
    check = baseline_self_check(handle, removal, baseline_check_n, metrics)
    segmenter_name = segmenter if "segx_iou_at_5" in metrics else None
    segmenter_handle = None if segmenter_name is None else load_model(segmenter_name, chosen,
                                                                      allow_random_weights=allow_random_weights)
    new_file = not table.is_file()
    skipped_no_positive = 0
    pool = None
    if workers > 1 or backend == "ray":
        threads = max(1, len(os.sched_getaffinity(0)) // workers) if workers else 1
        worker_device = "cuda" if backend == "ray" and chosen.type == "cuda" else str(chosen)  # Ray: its own GPU
        pool = start_workers(backend, workers, _start_worker,
                             (os.getpid() if backend == "local" else None, model, worker_device,
                              allow_random_weights, threads, options, segmenter_name),
                             threads=threads, gpus=1.0 if chosen.type == "cuda" else 0.0, address=address)
        workers = pool.size
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
            pool.shutdown()
    document = summary_document(table, methods, metrics, check)
    summary = method_summaries(document)
    summary_doc = {"model": model, "data": data, "n_cases": n, "seed": seed, "workers": workers, "backend": backend,
                   "segmenter": segmenter_name, "removal": removal_ops.describe(removal),
                   "gaze_kernel": dataclasses.asdict(kernel),
                   "baseline_check": check,
                   "scoring_bfloat16": scoring_bfloat16,
                   "cases_without_positives": skipped_no_positive, "summary": summary}
    write_strict_json(out / "summary.json", document)
    curves = median_curves(curve_file, methods)
    summary_doc["pic_median_curves"] = {m: {k: {key: v for key, v in c.items() if key != "y"} for k, c in kinds.items()}
                                        for m, kinds in curves.items()}
    write_strict_json(out / "pic_curves.json", curves)
    write_strict_json(out / "run.json", summary_doc)
    write_plots(table, methods, metrics, out)
    write_curve_plots(curves, out)
    return summary
