"""Engine jobs: priorities on a model, slow work yielding at checkpoints, cancellation, progress, de-duplication."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from xai_core.engine import Engine
from xai_core.imaging import Radiograph
from xai_core.jobs import (
    BACKGROUND,
    INTERACTIVE,
    Cancelled,
    Job,
    JobTable,
    PriorityLock,
    QueueFullError,
    checkpoint,
    model_released,
    running,
)
from xai_core.models.base import use_bfloat16
from xai_core.phantom import generate_case


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_a_slow_job_hands_the_model_to_waiting_interactive_work_at_its_checkpoint():
    lock, order = PriorityLock(), []
    started, proceed = threading.Event(), threading.Event()

    def slow() -> None:
        with running(Job(key="slow", kind="slow", priority=BACKGROUND), lock):
            started.set()
            proceed.wait(30)
            checkpoint()
            order.append("slow resumed")

    def fast() -> None:
        with lock.hold(INTERACTIVE):
            order.append("fast")

    slow_thread = threading.Thread(target=slow)
    slow_thread.start()
    started.wait(30)
    fast_thread = threading.Thread(target=fast)
    fast_thread.start()
    wait_until(lambda: lock.has_waiter_before(BACKGROUND))
    proceed.set()
    slow_thread.join(30)
    fast_thread.join(30)
    assert order == ["fast", "slow resumed"]


def test_work_that_does_not_use_the_model_lets_it_go_and_holds_it_again_at_the_same_depth():
    lock, order = PriorityLock(anticipation=0.0), []
    inside, fast_done = threading.Event(), threading.Event()

    def slow() -> None:
        with running(Job(key="slow", kind="slow", priority=BACKGROUND), lock), lock.hold(BACKGROUND):
            with model_released():
                assert not lock.held_by_me()
                inside.set()
                assert fast_done.wait(30), "another job used the model while this block ran"
                order.append("segmentation done")
            assert lock.held_by_me() and lock._depth == 2
        order.append("slow done")

    def fast() -> None:
        with lock.hold(INTERACTIVE):
            order.append("fast")
        fast_done.set()

    slow_thread = threading.Thread(target=slow)
    slow_thread.start()
    assert inside.wait(30)
    fast_thread = threading.Thread(target=fast)
    fast_thread.start()
    fast_thread.join(30)
    slow_thread.join(30)
    assert order == ["fast", "segmentation done", "slow done"]
    with model_released():  # outside a job: nothing to let go
        pass


def test_waiters_are_served_by_priority_then_arrival_and_the_lock_is_reentrant():
    lock, order = PriorityLock(), []
    lock.acquire()
    lock.acquire()  # re-entrant
    threads = []
    for name, priority in (("background-1", BACKGROUND), ("interactive", INTERACTIVE), ("background-2", BACKGROUND)):
        thread = threading.Thread(target=lambda n=name, p=priority: (lock.acquire(p), order.append(n),
                                                                     lock.release()))
        thread.start()
        threads.append(thread)
        expected = len(threads)
        wait_until(lambda n=expected: len(lock._waiting) == n)
    lock.release()
    assert order == []
    lock.release()
    for thread in threads:
        thread.join(30)
    assert order == ["interactive", "background-1", "background-2"]
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()


def test_after_interactive_work_background_waits_its_pause_so_a_reviewers_next_request_goes_first():
    lock, order = PriorityLock(anticipation=1.0), []
    got_it = threading.Event()

    def background() -> None:
        lock.acquire(BACKGROUND)
        order.append("background")
        got_it.set()
        lock.release()

    lock.acquire(INTERACTIVE)  # the reviewer's predict
    thread = threading.Thread(target=background)
    thread.start()
    wait_until(lambda: len(lock._waiting) == 1)
    lock.release()
    released = time.monotonic()
    time.sleep(0.05)  # the reviewer's Grad-CAM comes a moment later
    assert not got_it.is_set(), "the slow job did not take the model between the reviewer's two requests"
    with lock.hold(INTERACTIVE):
        order.append("interactive")
        released = time.monotonic()
    assert got_it.wait(10), "background work runs once the pause is over"
    waited = time.monotonic() - released
    thread.join(10)
    assert order == ["interactive", "background"] and waited >= 0.9


def test_a_cancelled_job_stops_at_its_next_checkpoint_and_releases_the_model():
    lock = PriorityLock()
    job = Job(key="k", kind="test", priority=BACKGROUND)
    with pytest.raises(Cancelled, match="cancelled"), running(job, lock):
        checkpoint(1, 4)
        assert job.progress == 0.25
        job.cancel()
        checkpoint(2, 4)
    assert lock._owner is None, "released on the way out"
    with lock.hold(INTERACTIVE):  # free again
        pass
    with pytest.raises(Cancelled, match="before it started"), running(job, lock):
        pass
    checkpoint()  # outside a job: nothing happens


def test_the_same_work_in_flight_is_computed_once_and_the_table_is_bounded():
    table, calls, gate = JobTable(max_jobs=1), [], threading.Event()

    def compute(job: Job) -> str:
        calls.append(job.id)
        gate.wait(30)
        return "map"

    results = []
    threads = [threading.Thread(target=lambda: results.append(table.run("key", "explain", 0, compute)))
               for _ in range(3)]
    threads[0].start()
    wait_until(lambda: len(calls) == 1)
    for thread in threads[1:]:
        thread.start()
    with pytest.raises(QueueFullError, match="limit is 1"):
        table.run("other", "explain", 0, compute)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert results == ["map"] * 3 and len(calls) == 1 and len(table) == 0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu")


def phantom(index: int, finding: str) -> Radiograph:
    return Radiograph.from_array(generate_case("test", index, size=224, findings=[finding]).image)


def test_background_explanations_report_progress_and_equal_the_direct_call(engine):
    case = phantom(1, "Nodule")
    job = engine.submit_explain(case, "demo", "ig", "Nodule", steps=16, batch=4, precision="float32")
    explanation = job.result(300)
    assert job.progress == pytest.approx(12 / 16)  # the last chunk started at step 12 of 16
    assert engine.explain(case, "demo", "ig", "Nodule", steps=16, batch=4, precision="float32") is explanation
    again = engine.submit_explain(case, "demo", "ig", "Nodule", steps=16, batch=4, precision="float32")
    assert again.result(1) is explanation, "a cached map comes back at once"


def test_cancelling_a_background_explanation(engine):
    case = phantom(2, "Mass")
    with engine.lock("demo").hold(INTERACTIVE):  # the model is busy: the job waits for it
        job = engine.submit_explain(case, "demo", "xrai", "Mass", steps=8, batch=4, precision="float32")
        wait_until(lambda: engine.lock("demo").has_waiter_before(BACKGROUND + 1))
        job.cancel()
    with pytest.raises(Cancelled):
        job.result(300)
    assert len(engine.jobs) == 0
    fresh = engine.explain(case, "demo", "gradcam", "Mass")  # the model works on
    assert np.isfinite(fresh.map).all()


def test_fast_work_is_served_while_a_slow_explanation_runs(engine):
    slow = engine.submit_explain(phantom(3, "Effusion"), "demo", "xrai", "Effusion", steps=16, batch=4,
                                 precision="float32")
    wait_until(lambda: slow.done_steps > 0)
    other = phantom(4, "Cardiomegaly")
    engine.predict(other, "demo")
    fast = engine.explain(other, "demo", "gradcam", "Cardiomegaly")
    assert not slow.future.done(), "the fast map did not wait for the whole slow one"
    assert fast.map.shape == (224, 224)
    assert slow.result(300).map.shape == (224, 224)


def test_concurrent_fast_explanations_of_one_model_run_as_one_batch_with_the_maps_of_single_requests():
    engine = Engine("cpu")
    model = "demo"
    images = [Radiograph.from_array(generate_case("test", i, seed=21, size=256).image, source_name=f"b{i}")
              for i in range(4)]
    alone = Engine("cpu")
    singles = [alone.explain(r, model, "gradcam", "Effusion").map for r in images]
    assert alone.stats.largest_explain_batch == 1
    lock = engine.lock(model)
    results: dict[int, np.ndarray] = {}
    lock.acquire()  # the model is busy: requests queue at the batcher meanwhile
    try:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, engine.explain(images[i], model, "gradcam", "Effusion").map)) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(engine.jobs.find("explain:gradcam")) == 4)
        time.sleep(0.3)  # the last claimed request reaches the batcher's queue
    finally:
        lock.release()
    for thread in threads:
        thread.join(60)
    assert engine.stats.largest_explain_batch >= 2, "queued requests were answered together"
    # 'auto' precision runs bfloat16 on CPUs with AVX512-BF16/AMX, where a batch may take other kernels
    relative = 2e-2 if use_bfloat16("auto", engine.model(model).device) else 1e-5
    for i, single in enumerate(singles):
        np.testing.assert_allclose(results[i], single, atol=relative * (float(single.max()) or 1.0))


def test_background_jobs_run_in_small_chunks_and_everything_else_at_full_batch():
    from xai_core.jobs import JOB_CHUNK_IMAGES, chunk_size

    assert chunk_size(32) == 32, "outside a job: the fastest batch"
    with running(Job(key="fast", kind="fast", priority=INTERACTIVE), None):
        assert chunk_size(32) == 32
    with running(Job(key="slow", kind="slow", priority=BACKGROUND), None):
        assert chunk_size(32) == JOB_CHUNK_IMAGES < 32 and chunk_size(4) == 4 and chunk_size(0) == 1


def test_the_time_left_comes_from_the_expected_cost_else_from_the_progress():
    job = Job(key="k", kind="slow", priority=BACKGROUND)
    assert job.seconds_left(2.0) is None, "no cost known and no progress reported"
    assert job.seconds_left(2.0, expected=5.0) == 3.0 and job.seconds_left(9.0, expected=5.0) == 0.0
    job.total_steps, job.done_steps = 4, 1
    assert job.seconds_left(2.0) == pytest.approx(6.0)
