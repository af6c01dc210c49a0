"""Jobs for the shared engine: priorities on a model, cooperative yielding, progress, cancellation, de-duplication.

A model's work is serialised by its `PriorityLock` (hooks mutate the shared module, so one job at a time runs a
forward on it). Slow methods call `checkpoint()` between chunks (IG step batches, Score-CAM channel batches, XRAI
stages); there, with no hook registered, a job hands the model to any waiting job of higher priority and takes it
back afterwards, so interactive fast work never waits for a whole slow explanation. `checkpoint()` is also where a
cancelled job stops and where progress is reported; outside a job it does nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from xai_core.errors import XaiError

INTERACTIVE = 0  # fast work a reviewer waits for
BACKGROUND = 10  # slow explanations, batch work
# how long background work leaves a model alone after an interactive hold ends (see PriorityLock)
ANTICIPATION_SECONDS = 0.05


class Cancelled(XaiError):
    """The job was cancelled before it finished."""


class QueueFullError(XaiError):
    """Too many jobs are waiting; the message says how many and what to do."""


class PriorityLock:
    """A re-entrant lock whose waiters are served by priority (lower first), then in arrival order.

    After an interactive hold ends, work of lower priority waits `anticipation` seconds before it takes the lock:
    a reviewer's requests come in runs (predict, then each fast tile), and without the pause a slow job would take
    the model back between any two of them, so each would wait for one of its chunks."""

    def __init__(self, anticipation: float = ANTICIPATION_SECONDS) -> None:
        self._condition = threading.Condition()
        self._owner: int | None = None
        self._owner_priority = INTERACTIVE
        self._depth = 0
        self._waiting: list[tuple[int, int]] = []  # (priority, ticket), kept sorted
        self._tickets = itertools.count()
        self._anticipation = anticipation
        self._quiet_until = 0.0  # lower priorities wait until then (monotonic seconds)

    def _pause_left(self, priority: int) -> float:
        """Seconds a waiter of this priority must still leave the lock to interactive work (0: none)."""
        if priority <= INTERACTIVE:
            return 0.0
        return max(0.0, self._quiet_until - time.monotonic())

    def _wait_for_turn(self, entry: tuple[int, int]) -> None:
        """With the condition held: wait until the lock is free, `entry` is first and no pause holds it back."""
        while True:
            if self._owner is None and self._waiting[0] == entry:
                pause = self._pause_left(entry[0])
                if pause <= 0:
                    return
                self._condition.wait(timeout=pause)
            else:
                self._condition.wait()

    def acquire(self, priority: int = INTERACTIVE) -> None:
        """Block until this thread holds the lock."""
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return
            entry = (priority, next(self._tickets))
            self._waiting.append(entry)
            self._waiting.sort()
            self._wait_for_turn(entry)
            self._waiting.pop(0)
            self._owner, self._owner_priority, self._depth = me, priority, 1

    def release(self) -> None:
        """Release one level of this thread's hold."""
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a PriorityLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._owner_priority <= INTERACTIVE and self._anticipation > 0:
                    self._quiet_until = time.monotonic() + self._anticipation
                self._condition.notify_all()

    def held_by_me(self) -> bool:
        """Whether this thread holds the lock."""
        with self._condition:
            return self._owner == threading.get_ident()

    def has_waiter_before(self, priority: int) -> bool:
        """Whether a thread of higher priority (a lower number) is waiting."""
        with self._condition:
            return bool(self._waiting) and self._waiting[0][0] < priority

    def yield_to_waiters(self, priority: int) -> None:
        """Let every waiter of higher priority run, then hold the lock again (at the same depth)."""
        with self._condition:
            if self._owner != threading.get_ident() or not self._waiting or self._waiting[0][0] >= priority:
                return
            self._take_back(priority, self._let_go())

    def _let_go(self) -> int:
        """With the condition held, by the owner: give the lock up entirely; returns the depth it was held at."""
        depth, self._owner, self._depth = self._depth, None, 0
        self._condition.notify_all()
        return depth

    def _take_back(self, priority: int, depth: int) -> None:
        """With the condition held: wait, first among `priority` (the job was running), then hold at `depth`."""
        entry = (priority, -1)
        self._waiting.append(entry)
        self._waiting.sort()
        self._wait_for_turn(entry)
        self._waiting.remove(entry)
        self._owner, self._owner_priority, self._depth = threading.get_ident(), priority, depth

    @contextlib.contextmanager
    def released(self, priority: int) -> Iterator[None]:
        """Run the block without this thread's hold (work that does not touch the model), then hold the lock again
        at `priority` and the same depth; nothing happens where this thread does not hold the lock."""
        with self._condition:
            held = self._let_go() if self._owner == threading.get_ident() else 0
        try:
            yield
        finally:
            if held:
                with self._condition:
                    self._take_back(priority, held)

    def __enter__(self) -> PriorityLock:
        self.acquire(INTERACTIVE)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def hold(self, priority: int = INTERACTIVE) -> Iterator[None]:
        """`with lock.hold(priority):` acquire and always release."""
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()


@dataclass
class Job:
    """One unit of engine work: its key (for de-duplication), priority, progress and result."""

    key: Hashable
    kind: str
    priority: int
    id: int = field(default_factory=lambda: next(_job_ids))
    future: Future = field(default_factory=Future)
    done_steps: int = 0
    total_steps: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the job to stop at its next checkpoint (a job that has not started never starts)."""
        self.cancelled.set()

    @property
    def progress(self) -> float | None:
        """Share of the work done, where the job reports its steps."""
        if not self.total_steps:
            return None
        return min(1.0, self.done_steps / self.total_steps)

    def seconds_left(self, elapsed: float, expected: float | None = None) -> float | None:
        """An estimate of the seconds left after `elapsed`: the `expected` total less `elapsed`, else what the
        reported progress extrapolates to, else None."""
        if expected:
            return max(0.0, expected - elapsed)
        progress = self.progress
        return elapsed * (1 - progress) / progress if progress else None

    def result(self, timeout: float | None = None) -> Any:
        """The job's result (or its exception)."""
        return self.future.result(timeout)


_job_ids = itertools.count(1)


@dataclass
class _Running:
    job: Job
    lock: PriorityLock | None


_current: ContextVar[_Running | None] = ContextVar("xai_job", default=None)


def current_job() -> Job | None:
    """The job this thread is running, if any."""
    running = _current.get()
    return running.job if running else None


# Inside a background job, model work between two checkpoints is kept to about this many images, so that waiting
# interactive work gets the model within a fraction of a second (docs/benchmarks.md, "Engine under load").
JOB_CHUNK_IMAGES = 8


def chunk_size(batch: int) -> int:
    """How many images to run between checkpoints: `batch` outside a job (fastest), at most `JOB_CHUNK_IMAGES` in
    a job of background priority (the model is handed over more often, at some cost in speed)."""
    running = _current.get()
    if running is None or running.job.priority <= INTERACTIVE:
        return batch
    return max(1, min(batch, JOB_CHUNK_IMAGES))


def checkpoint(done: int | None = None, total: int | None = None) -> None:
    """Between chunks of slow work: stop if cancelled, record progress, let higher-priority work use the model.

    Call it only where the caller has no hook registered on the model and no autograd graph that another job's
    forward could disturb."""
    running = _current.get()
    if running is None:
        return
    job = running.job
    if job.cancelled.is_set():
        raise Cancelled(f"job {job.id} ({job.kind}) was cancelled")
    if total is not None:
        job.total_steps = total
    if done is not None:
        job.done_steps = done
    if running.lock is not None:
        running.lock.yield_to_waiters(job.priority)


@contextlib.contextmanager
def model_released() -> Iterator[None]:
    """Inside a job: run the block with the model's lock let go (CPU work that does not use the model, e.g. XRAI's
    segmentation), so other jobs use the model meanwhile; outside a job it does nothing. The block must not touch the
    model, its hooks or a graph through it."""
    current = _current.get()
    if current is None or current.lock is None:
        yield
        return
    with current.lock.released(current.job.priority):
        yield


@contextlib.contextmanager
def running(job: Job, lock: PriorityLock | None) -> Iterator[None]:
    """Run the block as `job`, holding `lock` (if any) at the job's priority."""
    if job.cancelled.is_set():
        raise Cancelled(f"job {job.id} ({job.kind}) was cancelled before it started")
    token = _current.set(_Running(job, lock))
    try:
        if lock is None:
            yield
        else:
            with lock.hold(job.priority):
                yield
    finally:
        _current.reset(token)


class JobTable:
    """Jobs in flight by key: a second request for the same work joins the first instead of computing it again."""

    def __init__(self, max_jobs: int = 256) -> None:
        self.max_jobs = max_jobs
        self._jobs: dict[Hashable, Job] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._jobs)

    def claim(self, key: Hashable, kind: str, priority: int) -> tuple[Job, bool]:
        """The job in flight for `key`, or a new one; True when the caller created it and must `complete` it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job, False
            if len(self._jobs) >= self.max_jobs:
                raise QueueFullError(f"{len(self._jobs)} jobs are already running or waiting (the limit is "
                                     f"{self.max_jobs}); try again in a moment")
            job = Job(key=key, kind=kind, priority=priority)
            self._jobs[key] = job
            return job, True

    def complete(self, job: Job, compute: Callable[[Job], Any]) -> None:
        """Run `compute(job)` into the job's future and retire the job."""
        try:
            job.future.set_result(compute(job))
        except BaseException as exc:
            job.future.set_exception(exc)
        finally:
            with self._lock:
                self._jobs.pop(job.key, None)

    def run(self, key: Hashable, kind: str, priority: int, compute: Callable[[Job], Any]) -> Any:
        """`compute(job)`'s result, computed once however many threads ask for `key` at the same time."""
        job, owner = self.claim(key, kind, priority)
        if owner:
            self.complete(job, compute)
        return job.result()

    def find(self, kind: str | None = None) -> list[Job]:
        """The jobs in flight (of one kind)."""
        with self._lock:
            return [job for job in self._jobs.values() if kind is None or job.kind == kind]
