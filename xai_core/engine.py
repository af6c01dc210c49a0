"""The shared inference core: device, model cache, per-model locks, micro-batched predict, result cache."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import expit

from xai_core.imaging import Radiograph

if TYPE_CHECKING:
    from xai_core.explainers import Explanation
from xai_core.models import CropBox, ModelError, ModelHandle, load_model, preprocess

DEFAULT_CACHE_BYTES = 512 * 2**20


def pick_device(requested: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless `requested` (or $XAI_DEVICE) names one."""
    requested = requested or os.environ.get("XAI_DEVICE") or "auto"
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep glibc from hoarding freed activation buffers (glibc only; once per process).

    By default glibc raises its mmap and trim thresholds after large frees and then keeps DenseNet activation
    buffers on the heap: a CPU engine with DenseNet121 grew from 1.07 GB to 1.65 GB RSS over a concurrent predict
    run. Fixed thresholds (64 MB, which also pins the trim threshold) and 4 arenas kept the peak at 1.46 GB with
    the same throughput (benchmarks/engine.py).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)) and bool(libc.mallopt(_M_ARENA_MAX, 4))
    except (OSError, AttributeError):
        _malloc_tuned = False
    return _malloc_tuned


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return 64 + sum(_nbytes(k) + _nbytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 64 + sum(_nbytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return 64 + sum(_nbytes(getattr(value, name)) for name in value.__dataclass_fields__)
    if isinstance(value, (str, bytes)):
        return 49 + len(value)
    return 32


class ResultCache:
    """Thread-safe LRU cache bounded by the estimated bytes of its values."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old_size) = self._items.popitem(last=False)
                self._bytes -= old_size

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def cache_key(sha256: str, model: str, op: str, params: dict[str, Any] | None = None) -> tuple[str, str, str, str]:
    """(image sha256, model, op, canonical params) — the result-cache key."""
    return sha256, model, op, json.dumps(params or {}, sort_keys=True, default=str)


class _PredictBatcher:
    """Collects concurrent single-image forwards into one batch (bounded wait) on a worker thread."""

    def __init__(self, run_batch: Callable[[torch.Tensor], torch.Tensor], max_batch: int, max_wait_s: float):
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="xai-predict-batcher", daemon=True)
        self._thread.start()

    def announce(self) -> None:
        """A caller is preparing an input: the batcher may wait for it (up to the bound)."""
        with self._arriving_lock:
            self._arriving += 1

    def submit(self, x: torch.Tensor) -> Future:
        """Queue one input [C, H, W] (after `announce`); the future gives its output row."""
        future: Future = Future()
        self._queue.put((x, future))
        with self._arriving_lock:
            self._arriving -= 1
        return future

    def withdraw(self) -> None:
        """An announced caller failed before submitting."""
        with self._arriving_lock:
            self._arriving -= 1

    def _collect(self) -> list[tuple[torch.Tensor, Future]]:
        items = [self._queue.get()]
        deadline = time.monotonic() + self._max_wait_s
        while len(items) < self._max_batch:
            try:
                items.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._arriving == 0:
                break
            try:
                items.append(self._queue.get(timeout=min(remaining, 5e-4)))
            except queue.Empty:
                continue
        return items

    def _loop(self) -> None:
        while True:
            items = self._collect()
            try:
                outputs = self._run_batch(torch.stack([x for x, _ in items]))
            except BaseException as exc:  # delivered to every waiting caller
                for _, future in items:
                    future.set_exception(exc)
                continue
            for (_, future), row in zip(items, outputs, strict=True):
                future.set_result(row)


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
    batch_sizes: list[int] = field(default_factory=list)
    reused_forwards: int = 0
    explain_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # last (model, method) timing


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
    ) -> None:
        self.device = pick_device(str(device) if device is not None else None)
        tune_malloc()
        self.allow_random_weights = allow_random_weights
        self.cache = ResultCache(cache_bytes)
        self.stats = EngineStats()
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._models: dict[str, ModelHandle] = {}
        self._model_locks: dict[str, threading.RLock] = {}
        self._batchers: dict[str, _PredictBatcher] = {}
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
                self._model_locks[name] = threading.RLock()
                self._models[name] = handle
        return self._models[name]

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def lock(self, name: str) -> threading.RLock:
        """The lock that serialises work on one model (forwards and hook-mutating explainers)."""
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
            self.stats.batch_sizes.append(int(x.shape[0]))
            return handle.scorer()(x.to(handle.device)).cpu()

    def keeps_pyramid(self, model: str) -> bool:
        """True when predictions of this model keep the feature pyramid for a method that reuses the forward."""
        from xai_core.explainers import get_explainer, list_explainers

        handle = self.model(model)
        return any(get_explainer(m).reuses_forward and get_explainer(m).available(handle) for m in list_explainers())

    def _forward_rows(self, model: str, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor] | None]]:
        """Per-row (logits, pyramid or None) for the predict batcher."""
        if not self.keeps_pyramid(model):
            return [(row, None) for row in self.forward(model, x)]
        from xai_core.nemt import handle_pyramid

        handle = self.model(model)
        with self.lock(model), torch.inference_mode():
            self.stats.forwards[model] = self.stats.forwards.get(model, 0) + 1
            self.stats.batch_sizes.append(int(x.shape[0]))
            logits, taps = handle_pyramid(handle, x)
        logits = logits.float().cpu()
        return [(logits[i], [t[i:i + 1].clone() for t in taps]) for i in range(len(logits))]

    def _batcher(self, model: str) -> _PredictBatcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            with self._registry_lock:
                batcher = self._batchers.get(model)
                if batcher is None:
                    batcher = _PredictBatcher(lambda x: self._forward_rows(model, x), self._max_batch,
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


    def explain(self, radiograph: Radiograph, model: str, method: str, target: str | int, **params: Any
                ) -> Explanation:
        """One explanation map (model-input resolution), cached by image, model, method, target and params."""
        from xai_core.explainers import Explanation, get_explainer

        handle = self.model(model)
        index = handle.label_index(target)
        explainer = get_explainer(method)
        resolved = explainer.params(**params)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, f"explain:{method}",
                        {"target": index, **resolved})
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        x, _ = self.prepare(radiograph, model)
        pyramid = None
        if explainer.reuses_forward:
            pyramid = self.cache.get(cache_key(radiograph.sha256 + _window_tag(radiograph), model, "pyramid"))
        with self.lock(model):
            start = time.perf_counter()
            if pyramid is not None:  # the prediction forward already ran: only the explainer's own head runs
                self.stats.reused_forwards += 1
                maps = explainer.explain_from_taps(handle, pyramid, x.unsqueeze(0), torch.tensor([index]))
            else:
                maps = explainer.explain(handle, x.unsqueeze(0), torch.tensor([index]), **resolved)
            seconds = time.perf_counter() - start
        if pyramid is None:
            self.stats.explain_seconds[(model, method)] = seconds
        explanation = Explanation(map=maps[0].detach().float().cpu().numpy(), method=method,
                                  target=handle.card.labels[index], model=model, seconds=seconds, params=resolved)
        self.cache.put(key, explanation)
        return explanation


    def segment(self, radiograph: Radiograph, segmenter: str) -> dict[str, np.ndarray]:
        """Named boolean anatomy masks at the segmenter's input resolution (cached)."""
        from xai_core.models.segmenters import segment

        key = cache_key(radiograph.sha256 + _window_tag(radiograph), segmenter, "segment")

        def compute() -> dict[str, np.ndarray]:
            x, _ = self.prepare(radiograph, segmenter)
            with self.lock(segmenter):
                masks = segment(self.model(segmenter), x.unsqueeze(0))
            return {name: m[0].cpu().numpy() for name, m in masks.items()}

        return self.cache.get_or_compute(key, compute)

    def region(self, radiograph: Radiograph, model: str, target: str | int, segmenter: str = "demo-anatomy"):
        """The anatomy region that matters for a finding, on the model's input grid (`segx.Region`)."""
        import cv2

        from xai_core.segx import Region, region_for

        handle = self.model(model)
        label = handle.card.labels[handle.label_index(target)]
        region = region_for(label, segmenter, self.segment(radiograph, segmenter))
        size = handle.card.input.size
        if region.mask.shape != (size, size):
            resized = cv2.resize(region.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            region = Region(resized.astype(bool), region.structures, region.fallback)
        return region

    def refine(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
               segmenter: str = "demo-anatomy", mode: str = "soft", percent: float = 5.0) -> np.ndarray:
        """SegX: the explanation map restricted to the finding's anatomy (model-input resolution)."""
        from xai_core.segx import refine

        explanation = self.explain(radiograph, model, method, target)
        return refine(explanation.map, self.region(radiograph, model, target, segmenter).mask, mode, percent)

    def certainty(self, radiograph: Radiograph, model: str, method: str, target: str | int, *,
                  segmenter: str = "demo-anatomy", percent: float = 5.0) -> dict[str, Any]:
        """SegU scores, plus the calibrated verdict where the model's manifest stores a threshold for the method."""
        from xai_core.segx import segu, stored_calibration

        explanation = self.explain(radiograph, model, method, target)
        region = self.region(radiograph, model, target, segmenter)
        scores: dict[str, Any] = segu(explanation.map, region.mask, percent)
        scores["region"] = list(region.structures)
        scores["fallback_region"] = region.fallback
        calibration = stored_calibration(model, method)
        if calibration is not None and np.isfinite(scores["certainty"]):
            scores["threshold"] = calibration["threshold"]
            scores["verdict"] = "trust" if scores["certainty"] >= calibration["threshold"] else "doubt"
        return scores

    def top_neurons(self, radiograph: Radiograph, model: str, target: str | int, k: int = 5, *,
                    annotation: str | Path | None = None) -> list[dict[str, Any]]:
        """The k feature-layer neurons contributing most (weight x pooled activation) to the target's logit on this
        image, each with its MAMMI concepts (from `annotation`, default: the model's bundled annotation, when one
        exists) and its activation map on the model's input grid, scaled to [0, 1]."""
        import torch.nn.functional as F

        from xai_core.mammi import AnnotationStore, bundled_annotation, feature_maps, head_weights

        handle = self.model(model)
        index = handle.label_index(target)
        key = cache_key(radiograph.sha256 + _window_tag(radiograph), model, "feature-maps")

        def compute() -> np.ndarray:
            x, _ = self.prepare(radiograph, model)
            with self.lock(model), torch.inference_mode():
                return feature_maps(handle, x.unsqueeze(0), handle.card.feature_layer)[1][0].float().cpu().numpy()

        maps = self.cache.get_or_compute(key, compute)
        pooled = maps.mean((1, 2))
        weights = head_weights(handle, "features", len(pooled))
        if weights is None:
            raise ModelError(f"{model} has no linear head on {handle.card.feature_layer}: neuron contributions "
                             f"(weight x activation) are undefined for it")
        contribution = weights[index] * pooled
        order = np.argsort(-contribution, kind="stable")[:k]
        store = None
        path = Path(annotation) if annotation else bundled_annotation(model)
        if path is not None and path.is_file():
            store = AnnotationStore(path)
        size = handle.card.input.size
        out = []
        try:
            for neuron in order:
                grid = torch.from_numpy(maps[neuron])[None, None]
                spatial = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
                peak = float(spatial.max())
                record = store.neuron(int(neuron)) if store is not None else None
                out.append({
                    "neuron": int(neuron), "contribution": float(contribution[neuron]),
                    "activation": float(pooled[neuron]), "weight": float(weights[index, neuron]),
                    "concepts": list(zip(record.concepts, record.scores, strict=True)) if record else [],
                    "uncertain": bool(record.uncertain) if record else True,
                    "map": spatial / peak if peak > 0 else spatial,
                })
        finally:
            if store is not None:
                store.close()
        return out

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
