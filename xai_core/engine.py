"""The shared inference core's front: one call per view (predict, explain, refine with certainty, top neurons) over
the loaded models, their locks, the predict batchers and the result cache (`xai_core.runtime`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.special import expit

from xai_core.certainty import SEGU_PERCENT, calibrated_certainty, default_segmenter, find_calibration, weights_id
from xai_core.errors import ModelError
from xai_core.explainers import Explainer, Explanation, get_explainer, list_explainers
from xai_core.imaging import Radiograph
from xai_core.jobs import BACKGROUND, INTERACTIVE, Job, JobTable, PriorityLock, running
from xai_core.mammi import AnnotationStore, bundled_annotation, feature_maps, head_weights, neuron_contributions
from xai_core.metrics.localisation import iou_curve
from xai_core.models import CropBox, ModelHandle, load_model, preprocess
from xai_core.models.ood import DomainCheck, not_checked, stats_for
from xai_core.models.ood import features as ood_features
from xai_core.models.segmenters import segment
from xai_core.nemt import handle_pyramid
from xai_core.runtime import DEFAULT_CACHE_BYTES, MicroBatcher, ResultCache, cache_key, pick_device, tune_malloc
from xai_core.segx import Region, refine, region_for, segu


@dataclass(frozen=True)
class Prediction:
    """Per-label probabilities of one image, with the model's operating points."""

    model: str
    sha256: str
    labels: list[str]
    logits: np.ndarray
    probabilities: np.ndarray
    thresholds: np.ndarray
    random_weights: bool = False

    @property
    def positive(self) -> np.ndarray:
        return self.probabilities >= self.thresholds

    def ranked(self) -> list[dict[str, Any]]:
        """Findings sorted by probability, highest first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [self.finding(int(i)) for i in order]

    def finding(self, index: int) -> dict[str, Any]:
        return {
            "label": self.labels[index],
            "probability": float(self.probabilities[index]),
            "threshold": float(self.thresholds[index]),
            "positive": bool(self.positive[index]),
            "logit": float(self.logits[index]),
        }

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON shape used by the CLI and the dashboard."""
        return {
            "model": self.model,
            "sha256": self.sha256,
            "random_weights": self.random_weights,
            "findings": [self.finding(i) for i in range(len(self.labels))],
        }


@dataclass
class EngineStats:
    """Counters for tests and benchmarks."""

    predict_requests: int = 0
    forwards: dict[str, int] = field(default_factory=dict)
    largest_batch: int = 0
    reused_forwards: int = 0
    largest_explain_batch: int = 0  # most requests answered by one explainer call
    explain_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # last (model, method) timing


@dataclass(frozen=True)
class RefineView:
    """What the Refine page shows: the explanation, the finding's SegX region (anatomy) and refined map, the
    finding's probability and operating point, and for a finding the model reports, SegU's region, its IoU curve
    and the scores with the calibrated certainty (`Engine.certainty`); those three are None below the operating
    point."""

    explanation: Explanation
    region: Region
    refined: np.ndarray
    certainty: dict[str, Any] | None
    pixels: np.ndarray  # what the model saw, [0, 1], on its input grid
    finding: dict[str, Any] = field(default_factory=dict)  # Prediction.finding: probability, threshold, positive
    segu_region: Region | None = None
    iou_curve: tuple[np.ndarray, np.ndarray] | None = None  # thresholds [T], IoU(a_norm >= t, SegU region) [T]


class Engine:
    """Owns the device, the loaded models, their locks, the predict batchers and the result cache."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        allow_random_weights: bool = False,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_jobs: int = 256,
        background_workers: int = 2,
    ) -> None:
        self.device = pick_device(str(device) if device is not None else None)
        tune_malloc()
        self.allow_random_weights = allow_random_weights
        self.cache = ResultCache(cache_bytes)
        self.stats = EngineStats()
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._models: dict[str, ModelHandle] = {}
        self._model_locks: dict[str, PriorityLock] = {}
        self.jobs = JobTable(max_jobs)
        self._background = ThreadPoolExecutor(max_workers=background_workers, thread_name_prefix="xai-job")
        self._batchers: dict[str, MicroBatcher] = {}
        self._explain_batchers: dict[tuple, MicroBatcher] = {}
        self._registry_lock = threading.Lock()
        self._loading_locks: dict[str, threading.Lock] = {}

    def model(self, name: str) -> ModelHandle:
        """The loaded model (loaded once per process, thread-safe)."""
        handle = self._models.get(name)
        if handle is not None:
            return handle
        with self._registry_lock:
            loading_lock = self._loading_locks.setdefault(name, threading.Lock())
        with loading_lock:
            if name not in self._models:
                handle = load_model(name, self.device, allow_random_weights=self.allow_random_weights)
                self._model_locks[name] = PriorityLock()
                self._models[name] = handle
        return self._models[name]

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def lock(self, name: str) -> PriorityLock:
        """The lock that serialises work on one model (forwards and hook-mutating explainers); interactive work is
        served first, and slow explanations hand it over at their checkpoints (`xai_core.jobs`)."""
        self.model(name)
        return self._model_locks[name]

    def prepare(self, radiograph: Radiograph, model: str) -> tuple[torch.Tensor, CropBox]:
        """The network input [C, S, S] of a radiograph for a model (cached), and the crop it came from."""
        handle = self.model(model)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, "input")
        return self.cache.get_or_compute(key, lambda: preprocess(radiograph, handle.card.input))

    def forward(self, model: str, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch [B, C, S, S] (moved to the model's device), under the model lock."""
        handle = self.model(model)
        with self.lock(model), torch.inference_mode():
            self.stats.forwards[model] = self.stats.forwards.get(model, 0) + 1
            self.stats.largest_batch = max(self.stats.largest_batch, int(x.shape[0]))
            return handle.scorer()(x.to(handle.device)).cpu()

    def keeps_pyramid(self, model: str) -> bool:
        """True when predictions of this model keep the feature pyramid for a method that reuses the forward."""
        handle = self.model(model)
        return any(get_explainer(m).reuses_forward and get_explainer(m).available(handle) for m in list_explainers())

    def _forward_rows(self, model: str, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor] | None]]:
        """Per-row (logits, pyramid or None) for the predict batcher."""
        if not self.keeps_pyramid(model):
            return [(row, None) for row in self.forward(model, x)]
        handle = self.model(model)
        with self.lock(model), torch.inference_mode():
            self.stats.forwards[model] = self.stats.forwards.get(model, 0) + 1
            self.stats.largest_batch = max(self.stats.largest_batch, int(x.shape[0]))
            logits, taps = handle_pyramid(handle, x)
        logits = logits.float().cpu()
        return [(logits[i], [t[i:i + 1].clone() for t in taps]) for i in range(len(logits))]

    def _batcher(self, model: str) -> MicroBatcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            with self._registry_lock:
                batcher = self._batchers.get(model)
                if batcher is None:
                    batcher = MicroBatcher(lambda x: self._forward_rows(model, x), self._max_batch,
                                              self._max_wait_s)
                    self._batchers[model] = batcher
        return batcher

    def predict(self, radiograph: Radiograph, model: str) -> Prediction:
        """Per-label probabilities (sigmoid of the logits) and operating points; micro-batched and cached."""
        self.stats.predict_requests += 1
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, "predict")
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        handle = self.model(model)
        batcher = self._batcher(model)
        batcher.announce()
        try:
            x, _ = self.prepare(radiograph, model)
        except BaseException:
            batcher.withdraw()
            raise
        row, pyramid = batcher.submit(x).result()
        logits = row.numpy().astype(np.float32)
        if pyramid is not None:
            self.cache.put(cache_key(radiograph.sha256 + _window_tag(radiograph), model, "pyramid"), pyramid)
        card = handle.card
        prediction = Prediction(
            model=model,
            sha256=radiograph.sha256,
            labels=list(card.labels),
            logits=logits,
            probabilities=expit(logits).astype(np.float32),
            thresholds=np.array([card.thresholds.get(label, 0.5) for label in card.labels], dtype=np.float32),
            random_weights=handle.random_weights,
        )
        self.cache.put(key, prediction)
        return prediction

    def domain(self, radiograph: Radiograph, model: str) -> DomainCheck:
        """The out-of-domain guard for an image and model (`xai_core.models.ood`), the sibling of `predict`: 'out of
        domain' where the image's pooled features lie beyond the threshold set on the model's training images, 'not
        checked' where no statistics of these weights exist. The features are cached per image and model."""
        handle = self.model(model)
        stats, note = stats_for(handle)
        if stats is None:
            return not_checked(model, note)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, "ood-features")

        def compute() -> np.ndarray:
            x, _ = self.prepare(radiograph, model)
            with self.lock(model):
                return ood_features(handle, x.unsqueeze(0))[0]

        return stats.check(model, self.cache.get_or_compute(key, compute))

    def explain(self, radiograph: Radiograph, model: str, method: str, target: str | int, **params: Any
                ) -> Explanation:
        """One explanation map (model-input resolution), cached by image, model, method, target and params. Two
        requests for the same map while it is computed share one computation."""
        key, compute, priority = self._explain_request(radiograph, model, method, target, params)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        return self.jobs.run(key, f"explain:{method}", priority, compute)

    def submit_explain(self, radiograph: Radiograph, model: str, method: str, target: str | int, **params: Any
                       ) -> Job:
        """The same explanation as a background job: follow `job.progress`, stop it with `job.cancel()`, wait with
        `job.result()` (the Explanation)."""
        key, compute, priority = self._explain_request(radiograph, model, method, target, params)
        job, owner = self.jobs.claim(key, f"explain:{method}", priority)
        if owner:
            cached = self.cache.get(key)
            if cached is not None:
                self.jobs.complete(job, lambda _job: cached)
            else:
                self._background.submit(self.jobs.complete, job, compute)
        return job

    def _explain_request(self, radiograph: Radiograph, model: str, method: str, target: str | int,
                         params: dict[str, Any]) -> tuple[tuple, Callable[[Job], Explanation], int]:
        """(cache key, the computation as a job, its priority) of an explanation request, validated."""
        handle = self.model(model)
        index = handle.label_index(target)
        explainer = get_explainer(method)
        resolved = explainer.params(**params)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, f"explain:{method}",
                        {"target": index, **resolved})
        priority = INTERACTIVE if explainer.cost == "fast" else BACKGROUND

        def compute(job: Job) -> Explanation:
            return self._compute_explanation(job, radiograph, handle, explainer, index, resolved, key)

        return key, compute, priority

    def _compute_explanation(self, job: Job, radiograph: Radiograph, handle: ModelHandle, explainer: Explainer,
                             index: int, resolved: dict[str, Any], key: tuple) -> Explanation:
        model, method = handle.card.name, explainer.name
        x, crop = self.prepare(radiograph, model)
        pyramid = None
        if explainer.reuses_forward:
            pyramid = self.cache.get(cache_key(radiograph.sha256 + _window_tag(radiograph), model, "pyramid"))
        lock = self.lock(model)
        batched = pyramid is None and explainer.batches_requests and not lock.held_by_me()
        with running(job, None if batched else lock):  # a batch takes the lock on the batcher's thread
            start = time.perf_counter()
            if pyramid is not None:  # the prediction forward already ran: only the explainer's own head runs
                self.stats.reused_forwards += 1
                maps = explainer.explain_from_taps(handle, pyramid, x.unsqueeze(0), torch.tensor([index]))
            elif batched:  # with concurrent requests of the same model, method and params, in one call
                batcher = self._explain_batcher(handle, explainer, resolved, job.priority)
                batcher.announce()
                maps = batcher.submit((x, index)).result()
            else:
                maps = explainer.explain(handle, x.unsqueeze(0), torch.tensor([index]), **resolved)
            seconds = time.perf_counter() - start
        if pyramid is None:
            self.stats.explain_seconds[(model, method)] = seconds
        explanation = Explanation(map=maps[0].detach().float().cpu().numpy(), method=method,
                                  target=handle.card.labels[index], model=model, seconds=seconds, params=resolved,
                                  crop=crop)
        self.cache.put(key, explanation)
        return explanation


    def _explain_batcher(self, handle: ModelHandle, explainer: Explainer, resolved: dict[str, Any],
                         priority: int) -> MicroBatcher:
        """The batcher of one (model, method, params, priority): concurrent requests, one explainer call."""
        key = (handle.card.name, explainer.name, repr(sorted(resolved.items())), priority)
        batcher = self._explain_batchers.get(key)
        if batcher is not None:
            return batcher
        lock = self.lock(handle.card.name)

        def run_batch(items: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
            x = torch.stack([row for row, _ in items])
            with lock.hold(priority):
                self.stats.largest_explain_batch = max(self.stats.largest_explain_batch, len(items))
                maps = explainer.explain(handle, x, torch.tensor([index for _, index in items]), **resolved)
            return [row[None] for row in maps]

        with self._registry_lock:
            if key not in self._explain_batchers:
                self._explain_batchers[key] = MicroBatcher(run_batch, self._max_batch, self._max_wait_s,
                                                             combine=list, name=f"xai-explain-{explainer.name}")
            return self._explain_batchers[key]

    def segment(self, radiograph: Radiograph, segmenter: str) -> dict[str, np.ndarray]:
        """Named boolean anatomy masks at the segmenter's input resolution (cached)."""
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), segmenter, "segment")

        def compute() -> dict[str, np.ndarray]:
            x, _ = self.prepare(radiograph, segmenter)
            with self.lock(segmenter):
                masks = segment(self.model(segmenter), x.unsqueeze(0))
            return {name: m[0].cpu().numpy() for name, m in masks.items()}

        return self.cache.get_or_compute(key, compute)

    def region(self, radiograph: Radiograph, model: str, target: str | int, segmenter: str = "demo-anatomy"):
        """The region that matters for a finding, on the model's input grid (`segx.Region`): anatomy from the
        table, or a lesion segmenter's output."""
        handle = self.model(model)
        label = handle.card.labels[handle.label_index(target)]
        region = region_for(label, segmenter, self.segment(radiograph, segmenter))
        size = handle.card.input.size
        if region.mask.shape != (size, size):
            resized = cv2.resize(region.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            region = replace(region, mask=resized.astype(bool))
        return region

    def refine(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
               segmenter: str = "demo-anatomy", mode: str = "soft", percent: float = 5.0) -> np.ndarray:
        """SegX: the explanation map restricted to the finding's anatomy (model-input resolution)."""
        explanation = self.explain(radiograph, model, method, target)
        return refine(explanation.map, self.region(radiograph, model, target, segmenter).mask, mode, percent)

    def segu_scores(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
                    segmenter: str | None = None, percent: float = SEGU_PERCENT) -> dict[str, Any]:
        """SegU's raw scores (cIoU, cAUITC, inside-mass) of a finding's map against its SegU region, from
        `segmenter` (default: `certainty.default_segmenter`, the lesion segmenter where its weights exist), with
        what the region is: `segmenter`, `region`, `region_kind`, `fallback_region`, `empty_region`."""
        segmenter = segmenter or default_segmenter(model)
        explanation = self.explain(radiograph, model, method, target)
        region = self.region(radiograph, model, target, segmenter)
        scores: dict[str, Any] = segu(explanation.map, region.mask, percent)
        scores.update(segmenter=segmenter, region=list(region.structures), region_kind=region.kind,
                      fallback_region=region.fallback, empty_region=not region.mask.any())
        return scores

    def certainty(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
                  segmenter: str | None = None, percent: float = SEGU_PERCENT) -> dict[str, Any]:
        """SegU's scores (`segu_scores`) plus the probability that the finding is right and its verdict, where a
        calibration of this model, method and segmenter (for these weights, at this p) exists
        (`certainty.calibrated_certainty`)."""
        scores = self.segu_scores(radiograph, model, method, target, segmenter=segmenter, percent=percent)
        handle = self.model(model)
        label = handle.card.labels[handle.label_index(target)]
        calibration, note = find_calibration(model, method, scores["segmenter"], model_weights=weights_id(handle),
                                             segmenter_weights=weights_id(self.model(scores["segmenter"])))
        if calibration is not None and calibration.get("percent") != percent:
            calibration, note = None, (f"the SegU calibration of {model} with {method} is for p = "
                                       f"{calibration.get('percent')}%, not {percent:g}%")
        return {**scores, **calibrated_certainty(calibration, label, scores, note)}

    def refine_view(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
                    segmenter: str = "demo-anatomy", mode: str = "soft", percent: float = 5.0,
                    segu_segmenter: str | None = None) -> RefineView:
        """What the Refine page shows, in one call: the map (with its crop), the finding's anatomy region and SegX
        map (`segmenter`, `mode`, `percent`), the finding's probability, and where the model reports the finding,
        SegU's region (`segu_segmenter`, default `certainty.default_segmenter`), IoU curve and certainty at the
        calibrations' p."""
        explanation = self.explain(radiograph, model, method, target)
        region = self.region(radiograph, model, target, segmenter)
        refined = refine(explanation.map, region.mask, mode, percent)
        finding = self.predict(radiograph, model).finding(self.model(model).label_index(target))
        if not finding["positive"]:
            return RefineView(explanation, region, refined, None, self.input_image(radiograph, model), finding)
        scores = self.certainty(radiograph, model, method, target, segmenter=segu_segmenter)
        segu_region = self.region(radiograph, model, target, scores["segmenter"])
        thresholds, ious = iou_curve(explanation.map, segu_region.mask)
        return RefineView(explanation, region, refined, scores, self.input_image(radiograph, model), finding,
                          segu_region, (thresholds, ious[0]))

    def input_image(self, radiograph: Radiograph, model: str) -> np.ndarray:
        """What the model sees (its crop on its input grid, first channel) as a display image in [0, 1]."""
        x, _ = self.prepare(radiograph, model)
        lo, hi = self.model(model).card.input.value_range
        return np.clip((x[0].numpy() - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def top_neurons(self, radiograph: Radiograph, model: str, target: str | int, k: int = 5, *,
                    annotation: str | Path | None = None) -> list[dict[str, Any]]:
        """The k feature-layer neurons contributing most (weight x pooled activation) to the target's logit on this
        image, each with its MAMMI concepts (from `annotation`, default: the model's bundled annotation, when one
        exists) and its activation map on the model's input grid, scaled to [0, 1]."""
        handle = self.model(model)
        index = handle.label_index(target)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, "feature-maps")

        def compute() -> np.ndarray:
            x, _ = self.prepare(radiograph, model)
            with self.lock(model), torch.inference_mode():
                return feature_maps(handle, x.unsqueeze(0), handle.card.feature_layer)[1][0].float().cpu().numpy()

        maps = self.cache.get_or_compute(key, compute)
        weights = head_weights(handle, "features", len(maps))
        if weights is None:
            raise ModelError(f"{model} has no linear head on {handle.card.feature_layer}: neuron contributions "
                             f"(weight x activation) are undefined for it")
        path = Path(annotation) if annotation else bundled_annotation(model)
        store = AnnotationStore(path) if path is not None and path.is_file() else None
        try:
            return neuron_contributions(maps, weights, index, k, handle.card.input.size, store)
        finally:
            if store is not None:
                store.close()

    def expected_seconds(self, model: str, method: str) -> float | None:
        """Seconds the last full run of this method on this model took in this process (None if never run)."""
        return self.stats.explain_seconds.get((model, method))


def _window_tag(radiograph: Radiograph) -> str:
    """Distinguishes re-windowed versions of the same file in cache keys."""
    window = radiograph.meta.get("window")
    return "" if window is None else f"@{window[0]:.6g},{window[1]:.6g}"


_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine(**kwargs: Any) -> Engine:
    """The process-wide engine (created on first use with `kwargs`)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Engine(**kwargs)
        return _ENGINE
