"""The engine's infrastructure: device choice, allocator tuning, the bounded result cache, the predict batcher."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

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
    buffers on the heap, so a long-running CPU engine grows. Fixed thresholds (64 MB, which also pins the trim
    threshold) and 4 arenas bound the peak at the same throughput (benchmarks/engine.py; docs/benchmarks.md).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
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


class MicroBatcher:
    """Collects concurrent single-image requests into one batch (bounded wait) on a worker thread. `combine` makes
    the batch from the submitted items (default: stack the inputs [C, H, W] into [B, C, H, W]); `run_batch` returns
    one output per item, in order."""

    def __init__(self, run_batch: Callable[[Any], Sequence[Any]], max_batch: int, max_wait_s: float, *,
                 combine: Callable[[list[Any]], Any] = torch.stack, name: str = "xai-predict-batcher"):
        self._run_batch = run_batch
        self._combine = combine
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[Any, Future]] = queue.Queue()
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def announce(self) -> None:
        """A caller is preparing an input: the batcher may wait for it (up to the bound)."""
        with self._arriving_lock:
            self._arriving += 1

    def submit(self, x: Any) -> Future:
        """Queue one item (after `announce`); the future gives its output."""
        future: Future = Future()
        self._queue.put((x, future))
        with self._arriving_lock:
            self._arriving -= 1
        return future

    def withdraw(self) -> None:
        """An announced caller failed before submitting."""
        with self._arriving_lock:
            self._arriving -= 1

    def _collect(self) -> list[tuple[Any, Future]]:
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
                outputs = self._run_batch(self._combine([x for x, _ in items]))
            except BaseException as exc:  # delivered to every waiting caller
                for _, future in items:
                    future.set_exception(exc)
                continue
            for (_, future), row in zip(items, outputs, strict=True):
                future.set_result(row)
