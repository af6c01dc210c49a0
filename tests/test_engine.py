"""The shared inference core: concurrency, micro-batching, caching, device choice."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from xai_core.engine import Engine, get_engine
from xai_core.imaging import Radiograph, rewindow
from xai_core.runtime import ResultCache, cache_key, pick_device

MODEL = "xrv-densenet121-nih"


def synthetic_radiograph(seed: int, size: int = 128) -> Radiograph:
    rng = np.random.default_rng(seed)
    pixels = rng.random((size, size), dtype=np.float32)
    raw = (pixels * 4095).astype(np.float32)
    meta = {"window": [2048.0, 4096.0], "voi_function": "LINEAR", "photometric": "MONOCHROME2"}
    return Radiograph(pixels=pixels, raw=raw, meta=meta, sha256=f"synthetic-{seed}", source_name=f"s{seed}")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu", allow_random_weights=True, max_wait_s=0.05)


def test_pick_device_prefers_request_then_env(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("XAI_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.delenv("XAI_DEVICE")
    assert pick_device().type in {"cpu", "cuda", "mps"}


def test_model_is_loaded_once_under_concurrency(engine):
    handles = []
    threads = [threading.Thread(target=lambda: handles.append(engine.model(MODEL))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in handles}) == 1
    assert engine.loaded_models().count(MODEL) == 1


def test_concurrent_predicts_match_serial_with_fewer_forwards():
    radiographs = [synthetic_radiograph(seed) for seed in range(8)]
    serial_engine = Engine("cpu", allow_random_weights=True)
    serial = [serial_engine.predict(r, MODEL) for r in radiographs]

    engine = Engine("cpu", allow_random_weights=True, max_wait_s=0.2)
    engine.model(MODEL)
    start = threading.Barrier(len(radiographs))
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            start.wait()
            results[i] = engine.predict(radiographs[i], MODEL)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(radiographs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, expected in enumerate(serial):
        np.testing.assert_allclose(results[i].logits, expected.logits, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(results[i].positive, expected.positive)
    assert engine.stats.forwards[MODEL] < len(radiographs)
    assert engine.stats.largest_batch > 1


def test_serial_predict_does_not_wait_for_a_batch():
    window = 60.0  # a held caller would wait this long; two forwards take well under it even on a busy CPU
    engine = Engine("cpu", allow_random_weights=True, max_wait_s=window)
    engine.model(MODEL)  # loading is not part of the wait
    import time

    start = time.perf_counter()
    engine.predict(synthetic_radiograph(1), MODEL)
    engine.predict(synthetic_radiograph(2), MODEL)
    assert time.perf_counter() - start < window, "a lone caller is not held for the batching window"


def test_prediction_is_cached_by_content_and_window(engine):
    radiograph = synthetic_radiograph(42)
    first = engine.predict(radiograph, MODEL)
    forwards = engine.stats.forwards[MODEL]
    again = engine.predict(radiograph, MODEL)
    assert again is first and engine.stats.forwards[MODEL] == forwards
    engine.predict(rewindow(radiograph, 1000, 500), MODEL)
    assert engine.stats.forwards[MODEL] == forwards + 1, "a new window is a new input"


def test_prediction_contract(engine):
    prediction = engine.predict(synthetic_radiograph(7), MODEL)
    card = engine.model(MODEL).card
    data = prediction.to_dict()
    assert set(data) == {"model", "sha256", "random_weights", "findings"}
    assert [f["label"] for f in data["findings"]] == card.labels
    assert all(0.0 <= f["probability"] <= 1.0 for f in data["findings"])
    assert all(f["threshold"] == pytest.approx(card.thresholds[f["label"]]) for f in data["findings"])
    ranked = [f["probability"] for f in prediction.ranked()]
    assert ranked == sorted(ranked, reverse=True)


def test_forward_errors_reach_every_caller(engine):
    bad = Radiograph(pixels=np.zeros((0, 0), np.float32), raw=np.zeros((0, 0), np.float32), meta={},
                     sha256="empty", source_name="bad")
    with pytest.raises(Exception):  # noqa: B017 - any failure is fine, it must not hang
        engine.predict(bad, MODEL)
    assert engine.predict(synthetic_radiograph(3), MODEL) is not None, "the engine keeps working"


def test_result_cache_is_lru_bounded_by_bytes():
    cache = ResultCache(max_bytes=3 * 1000 + 100)
    for i in range(3):
        cache.put(i, np.zeros(250, np.float32))  # 1000 bytes each
    assert len(cache) == 3
    cache.get(0)  # 0 becomes most recent
    cache.put(3, np.zeros(250, np.float32))
    assert cache.get(1) is None and cache.get(0) is not None and cache.get(3) is not None
    assert cache.nbytes <= cache.max_bytes
    cache.put("huge", np.zeros(10_000, np.float32))
    assert cache.get("huge") is None, "a value larger than the bound is not kept"
    assert cache_key("a", "m", "op", {"b": 1, "a": 2}) == cache_key("a", "m", "op", {"a": 2, "b": 1})


def test_get_engine_is_a_process_singleton():
    assert get_engine() is get_engine()
