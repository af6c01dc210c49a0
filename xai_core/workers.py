"""Worker processes for batch jobs, behind one interface: the local process pool or Ray actors.

`start_workers` starts `workers` processes, each running `initializer(*initargs)` once (load the models), and returns a
`WorkerPool` whose `submit(task, item)` runs a module-level `task(item)` on one of them and returns a
`concurrent.futures.Future`. The batch jobs (`evaluate`, `annotate-neurons`, batch `explain`) submit their items in
order and consume the futures in that order, so their result files do not depend on the backend.

- `local`: spawned processes on this machine (`concurrent.futures.ProcessPoolExecutor`).
- `ray`: Ray actors, one per worker, on a local Ray started for the job (loopback only, no dashboard) or on a
  running cluster given by address; each actor reserves `threads` CPUs and `gpus` GPUs as Ray resources. Every node
  of a cluster needs this project at the same path and its requirements installed (the workers import `xai_core`
  from there and read the bundled weights).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from xai_core.errors import InputError

BACKENDS = ("local", "ray")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Ray's shared-memory object store for a local Ray started by a job: results are small (rows, activations)
LOCAL_RAY_OBJECT_STORE_BYTES = 256 * 1024 ** 2


class WorkerPool(Protocol):
    """Started worker processes that run tasks."""

    size: int

    def submit(self, task: Callable[[Any], Any], item: Any) -> Future:
        """Run `task(item)` on a worker; the future holds its result or its exception."""

    def shutdown(self) -> None:
        """Stop the workers (pending tasks are cancelled)."""


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Spawned processes re-run the parent's `__main__` before anything else; under Streamlit that is the page
    script (Streamlit installs it as `__main__`), which must not run in a worker. While the block runs, the main
    module names no file or spec, so workers import only what their tasks need."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _ready() -> None:
    """A task that only proves a worker has started."""


def _run(task: Callable[[Any], Any], item: Any) -> Any:
    return task(item)


class LocalPool:
    """Spawned processes on this machine, all started (and initialised) before the constructor returns."""

    def __init__(self, workers: int, initializer: Callable[..., None], initargs: tuple) -> None:
        self.size = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=initializer, initargs=initargs)
        with _main_hidden():
            for started in [self._pool.submit(_ready) for _ in range(workers)]:
                started.result()

    def submit(self, task: Callable[[Any], Any], item: Any) -> Future:
        return self._pool.submit(_run, task, item)

    def shutdown(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class _Actor:
    """One Ray worker: runs the initializer once, then tasks."""

    def __init__(self, initializer: Callable[..., None], initargs: tuple) -> None:
        initializer(*initargs)

    def run(self, task: Callable[[Any], Any], item: Any) -> Any:
        return task(item)


# Ray takes the node's network address unless "clusters" are off, as on a laptop; then every Ray server of the node
# binds loopback. A local Ray started by a job sets it before Ray is first imported.
_LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def import_ray(local: bool) -> Any:
    """The `ray` module; for a local Ray (`local`), its servers bound to loopback only (set before the first import
    of Ray in this process)."""
    if local:
        for name, value in _LOOPBACK_ONLY.items():
            os.environ.setdefault(name, value)
    try:
        import ray  # deferred: slow to import, needed only by --backend ray, and only after the variables above
    except ImportError as error:  # pragma: no cover - ray is a pinned requirement
        raise InputError("--backend ray needs the 'ray' package (pip install -r requirements.txt)") from error
    return ray


class RayPool:
    """Ray actors on a local Ray or a cluster; each task goes to the actor with the fewest tasks in flight."""

    def __init__(self, workers: int, initializer: Callable[..., None], initargs: tuple, *, threads: int = 1,
                 gpus: float = 0.0, address: str | None = None) -> None:
        ray = import_ray(local=address is None)
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(**ray_init_options(address, workers * threads or len(os.sched_getaffinity(0))))
        available = ray.cluster_resources()
        if available.get("CPU", 0) < threads or (gpus and available.get("GPU", 0) < gpus):
            self.shutdown()
            raise InputError(f"the Ray cluster has {available.get('CPU', 0):g} CPUs and {available.get('GPU', 0):g} "
                             f"GPUs; one worker needs {threads} CPUs and {gpus:g} GPUs")
        if workers == 0:
            workers = max(1, int(available["CPU"] // threads) if not gpus else int(available["GPU"] // gpus))
        actor = ray.remote(num_cpus=threads, num_gpus=gpus)(_Actor)
        self.size = workers
        self._actors = [actor.remote(initializer, initargs) for _ in range(workers)]
        self._in_flight = [0] * workers
        try:
            ray.get([a.__ray_ready__.remote() for a in self._actors])  # constructors done (or raised)
        except Exception:
            self.shutdown()
            raise

    def submit(self, task: Callable[[Any], Any], item: Any) -> Future:
        index = min(range(self.size), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        future = self._actors[index].run.remote(task, item).future()

        def done(_: Future) -> None:
            self._in_flight[index] -= 1

        future.add_done_callback(done)
        return future

    def shutdown(self) -> None:
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor)
        self._actors = []
        if self._started_here:
            self._ray.shutdown()


def ray_init_options(address: str | None, cpus: int) -> dict[str, Any]:
    """`ray.init` arguments: a running cluster at `address`, or a local Ray of `cpus` CPUs bound to loopback with
    no dashboard. Workers import `xai_core` from this project."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                               "configure_logging": True, "logging_level": "warning"}
    if address:
        return {**options, "address": address}
    return {**options, "num_cpus": max(1, cpus), "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "object_store_memory": LOCAL_RAY_OBJECT_STORE_BYTES}


def check_backend(backend: str, address: str | None) -> None:
    """A clear error for an unknown backend or an address without Ray."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise InputError("--address is the Ray cluster to use: add --backend ray")


def start_workers(backend: str, workers: int, initializer: Callable[..., None], initargs: tuple, *, threads: int = 1,
                  gpus: float = 0.0, address: str | None = None) -> WorkerPool:
    """`workers` started processes of `backend` (for ray, 0 means one per `threads` CPUs of the cluster)."""
    check_backend(backend, address)
    if backend == "ray":
        return RayPool(workers, initializer, initargs, threads=threads, gpus=gpus, address=address)
    if workers < 1:
        raise InputError(f"the local backend needs at least one worker (got {workers})")
    return LocalPool(workers, initializer, initargs)
