"""Dashboard load: N simulated reviewer sessions against one shared CPU engine, scheduled engine vs a FIFO baseline.

    python benchmarks/load.py [--model demo] [--sessions 1,4,20] [--duration 20] [--think 2.0] [--slow-every 10]
                              [--slow both|on|off] [--warmup 3] [--quick] [--json OUT]
    python -m xai_core bench load ...   (the same)

Every session is a thread that loops for --duration seconds (after a warm-up) over the dashboard's request mix: a NEW
phantom image per interaction (so the result cache never hits), `engine.predict`, then the three fast maps
(gradcam, gradcampp, nemt) of the top-ranked finding, then an exponential think time (mean --think s, seeded per
session). With slow jobs on, every --slow-every-th (K-th) interaction of a session also submits a slow map (xrai
and scorecam alternately) with `engine.submit_explain` right after its predict and does not wait for it; the
sessions are staggered (session i submits at interactions 1 + (i mod K), 1 + (i mod K) + K, ...), so about 1/K of
all interactions submit one even when a run is shorter than K interactions per session. Outstanding jobs are
cancelled and drained when the run ends. Each predict and each fast map is one "fast request"; its
latency is the wall time of the call.

Engines: "scheduled" is `xai_core.engine.Engine` as it is (the model's PriorityLock serves interactive work first,
slow explainers hand the model over at their checkpoints); "baseline" is a subclass that gives every explanation
priority INTERACTIVE, so the model lock is FIFO and a slow job never hands the model over. Each (engine, N, slow)
configuration runs in a fresh subprocess, so memory (peak RSS) and caches are per configuration.

Bar (reported, not asserted): with 20 sessions and slow jobs, p95 of fast requests <= 1.0 s on the scheduled engine.
--quick is a smoke-test setting: --sessions 2 --duration 3 --think 0.2 --slow-every 2 --warmup 1 (explicit options
still win).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.engine import Engine
from xai_core.explainers import Explanation, get_explainer, list_explainers
from xai_core.jobs import INTERACTIVE, Cancelled, Job, QueueFullError
from xai_core.phantom import generate_case
from xai_core.radiograph import Radiograph

FAST_METHODS = ("gradcam", "gradcampp", "nemt")
SLOW_METHODS = ("xrai", "scorecam")
ENGINES = ("baseline", "scheduled")
BAR_SESSIONS, BAR_P95_S = 20, 1.0
DEFAULTS = {"sessions": "1,4,20", "duration": 20.0, "think": 2.0, "slow_every": 10, "warmup": 3}
QUICK = {"sessions": "2", "duration": 3.0, "think": 0.2, "slow_every": 2, "warmup": 1}
PHANTOM_SEED, PHANTOM_SIZE = 11, 256
WARMUP_OFFSET = 1_000_000  # phantom indices of warm-up images, apart from the measured pool
BASELINE_MEANS = ("Engine subclass whose _explain_request gives every explanation priority INTERACTIVE: the model "
                  "lock is FIFO and slow jobs never hand the model over at their checkpoints")
SCHEDULED_MEANS = ("xai_core.engine.Engine as it is: PriorityLock serves interactive work first, slow explainers "
                   "(priority BACKGROUND) yield the model at their checkpoints")


class FifoEngine(Engine):
    """The unscheduled baseline: every explanation, fast or slow, runs at priority INTERACTIVE."""

    def _explain_request(self, radiograph: Radiograph, model: str, method: str, target: str | int,
                         params: dict[str, Any]) -> tuple[tuple, Callable[[Job], Explanation], int]:
        key, compute, _priority = super()._explain_request(radiograph, model, method, target, params)
        return key, compute, INTERACTIVE


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stats(values: list[float]) -> dict[str, float | int]:
    """count, p50, p95, max and mean of latencies in seconds (zeros where there are none)."""
    if not values:
        return {"count": 0, "p50_s": 0.0, "p95_s": 0.0, "max_s": 0.0, "mean_s": 0.0}
    a = np.asarray(values)
    return {"count": len(values), "p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)),
            "max_s": float(a.max()), "mean_s": float(a.mean())}


class ImagePool:
    """Distinct phantom cases, each handed out once; made on demand (and counted) when the pre-made pool runs out."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._seen: set[str] = set()
        self._pool = [self._make() for _ in range(size)]
        self.pool_size = len(self._pool)
        self.used = 0
        self.extra = 0

    def _make(self) -> Radiograph:
        while True:  # skip any repeated case so no two interactions share a cache entry
            i = self._next
            self._next += 1
            pixels = generate_case("test", i, seed=PHANTOM_SEED, size=PHANTOM_SIZE).image
            r = Radiograph.from_array(pixels, source_name=f"load-{i}")
            if r.sha256 not in self._seen:
                self._seen.add(r.sha256)
                return r

    def take(self) -> Radiograph:
        with self._lock:
            self.used += 1
            if self._pool:
                return self._pool.pop()
            self.extra += 1
            return self._make()


def warm_up(engine: Engine, model: str, interactions: int, slow: bool) -> None:
    """Load the model and run the code paths once (on images outside the pool), then drop the cache."""
    for i in range(interactions):
        pixels = generate_case("test", WARMUP_OFFSET + i, seed=PHANTOM_SEED, size=PHANTOM_SIZE).image
        r = Radiograph.from_array(pixels, source_name=f"warmup-{i}")
        target = engine.predict(r, model).ranked()[0]["label"]
        for method in FAST_METHODS:
            engine.explain(r, model, method, target)
        if slow and i == 0:  # first-call costs of the slow methods (cheap settings), outside the measurement
            engine.explain(r, model, "xrai", target, steps=2, batch=2)
            engine.explain(r, model, "scorecam", target, top_k=4)
    engine.cache.clear()


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process: warm up, run the sessions, drain the slow jobs, report."""
    model, n, slow = config["model"], int(config["sessions"]), bool(config["slow"])
    duration, think, slow_every = float(config["duration"]), float(config["think"]), int(config["slow_every"])
    engine = (FifoEngine if config["engine"] == "baseline" else Engine)("cpu")
    warm_up(engine, model, int(config["warmup"]), slow)
    expected = n * (math.ceil(duration / max(think, 0.05)) + 3)
    pool = ImagePool(int(expected * 1.3) + 8)
    rss_before = peak_rss_mb()

    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"predict": [], **{m: [] for m in FAST_METHODS}}
    slow_jobs: list[tuple[str, float, Job]] = []
    slow_done: dict[int, tuple[str, float]] = {}  # job id -> (outcome, seconds from submit)
    counts = {"interactions": 0, "rejected": 0}
    errors: list[str] = []
    barrier = threading.Barrier(n + 1)
    start = end = 0.0

    def timed(kind: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - t0
        with lock:
            latencies[kind].append(seconds)
        return out

    def on_done(job: Job, submitted: float) -> None:
        seconds = time.perf_counter() - submitted
        exc = job.future.exception()
        outcome = "completed" if exc is None else "cancelled" if isinstance(exc, Cancelled) else "failed"
        with lock:
            slow_done[job.id] = (outcome, seconds)

    def session(index: int) -> None:
        rng = random.Random(1000 + index)  # seeded per session
        barrier.wait()
        k = 0
        try:
            time.sleep(min(rng.expovariate(1 / think), max(0.0, end - time.perf_counter())) if think > 0 else 0)
            while time.perf_counter() < end:
                k += 1
                r = pool.take()
                target = timed("predict", lambda r=r: engine.predict(r, model)).ranked()[0]["label"]
                if slow and (k - 1 - index) % slow_every == 0:  # staggered: session i starts at k = 1 + i mod K
                    method = SLOW_METHODS[((k - 1) // slow_every + index) % len(SLOW_METHODS)]
                    try:
                        submitted = time.perf_counter()
                        job = engine.submit_explain(r, model, method, target)
                    except QueueFullError:
                        with lock:
                            counts["rejected"] += 1
                    else:
                        with lock:
                            slow_jobs.append((method, submitted, job))
                        job.future.add_done_callback(lambda _f, j=job, s=submitted: on_done(j, s))
                for method in FAST_METHODS:
                    timed(method, lambda m=method, r=r, t=target: engine.explain(r, model, m, t))
                with lock:
                    counts["interactions"] += 1
                remaining = end - time.perf_counter()
                if remaining > 0 and think > 0:
                    time.sleep(min(rng.expovariate(1 / think), remaining))
        except Exception as exc:  # a failed session must show in the report, not vanish with its thread
            with lock:
                errors.append(f"session {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=session, args=(i,), name=f"session-{i}") for i in range(n)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    end = start + duration
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start

    with lock:
        done_in_run = dict(slow_done)
    outstanding = [job for _m, _s, job in slow_jobs if job.id not in done_in_run]
    for job in outstanding:  # so nothing of this run bleeds into the process's exit (or another run)
        job.cancel()
    for job in outstanding:
        with contextlib.suppress(Exception):  # Cancelled (the expected case) or a failure
            job.result(timeout=120)
    completed = [v[1] for v in done_in_run.values() if v[0] == "completed"]
    fast = [s for kind in latencies.values() for s in kind]
    return {
        "engine": config["engine"],
        "sessions": n,
        "slow": slow,
        "fast": stats(fast),
        "per_kind": {kind: stats(values) for kind, values in latencies.items()},
        "throughput_per_s": len(fast) / elapsed,
        "interactions": counts["interactions"],
        "elapsed_s": elapsed,
        "slow_jobs": {
            "submitted": len(slow_jobs),
            "by_method": {m: sum(1 for method, _s, _j in slow_jobs if method == m) for m in SLOW_METHODS},
            "completed": len(completed),  # finished before the sessions stopped
            "failed": sum(1 for v in done_in_run.values() if v[0] == "failed"),
            "unfinished_at_end": len(outstanding),  # cancelled and drained after the run
            "rejected_queue_full": counts["rejected"],
            "seconds_to_result": stats(completed),
        },
        "images": {"pool": pool.pool_size, "used": pool.used, "made_on_demand": pool.extra},
        "peak_rss_mb_before_run": rss_before,  # model loaded, warmed up, image pool made
        "peak_rss_mb": peak_rss_mb(),
        "errors": errors,
    }


def run_subprocess(config: dict[str, Any]) -> dict[str, Any]:
    """`run_one(config)` in a fresh Python process (this script with the hidden --one option)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(config), "--one-out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"configuration {config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """baseline/scheduled p50, p95 and throughput per (sessions, slow)."""
    by = {(r["engine"], r["sessions"], r["slow"]): r for r in runs}
    out = []
    for (engine, n, slow), sched in by.items():
        base = by.get(("baseline", n, slow))
        if engine != "scheduled" or base is None:
            continue

        def ratio(a: float, b: float) -> float | None:
            return a / b if b > 0 else None

        out.append({"sessions": n, "slow": slow,
                    "p95_baseline_over_scheduled": ratio(base["fast"]["p95_s"], sched["fast"]["p95_s"]),
                    "p50_baseline_over_scheduled": ratio(base["fast"]["p50_s"], sched["fast"]["p50_s"]),
                    "throughput_baseline_over_scheduled": ratio(base["throughput_per_s"],
                                                                sched["throughput_per_s"])})
    return out


def bar(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the scheduled engine meets p95 <= 1.0 s with 20 sessions and slow jobs (None: not run)."""
    run = next((r for r in runs if r["engine"] == "scheduled" and r["sessions"] == BAR_SESSIONS and r["slow"]), None)
    p95 = run["fast"]["p95_s"] if run else None
    return {"what": f"scheduled engine, {BAR_SESSIONS} sessions, slow jobs on: p95 of fast requests <= {BAR_P95_S} s",
            "p95_s": p95, "met": None if p95 is None else p95 <= BAR_P95_S}


def print_table(runs: list[dict[str, Any]], rat: list[dict[str, Any]], verdict: dict[str, Any]) -> None:
    print(f"{'engine':<10} {'N':>3} {'slow':>4} {'fast':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'req/s':>7} "
          f"{'p95 predict':>11} {'p95 cam':>8} {'p95 cam++':>9} {'p95 nemt':>8} {'slow sub/done':>13} "
          f"{'peak MB':>8}")
    for r in runs:
        f, k, s = r["fast"], r["per_kind"], r["slow_jobs"]
        print(f"{r['engine']:<10} {r['sessions']:>3} {'on' if r['slow'] else 'off':>4} {f['count']:>6} "
              f"{f['p50_s']:>7.3f} {f['p95_s']:>7.3f} {f['max_s']:>7.3f} {r['throughput_per_s']:>7.1f} "
              f"{k['predict']['p95_s']:>11.3f} {k['gradcam']['p95_s']:>8.3f} {k['gradcampp']['p95_s']:>9.3f} "
              f"{k['nemt']['p95_s']:>8.3f} {str(s['submitted']) + '/' + str(s['completed']):>13} "
              f"{r['peak_rss_mb']:>8.0f}")
        for e in r["errors"]:
            print(f"  error: {e}")
    for x in rat:
        p95 = x["p95_baseline_over_scheduled"]
        print(f"N={x['sessions']:<3} slow {'on ' if x['slow'] else 'off'}  p95 baseline/scheduled "
              f"{'n/a' if p95 is None else f'{p95:.2f}x'}")
    if verdict["met"] is None:
        print(f"bar ({verdict['what']}): not run in this selection")
    else:
        print(f"bar ({verdict['what']}): p95 {verdict['p95_s']:.3f} s -> {'MET' if verdict['met'] else 'NOT MET'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--sessions", default=None, help=f"comma-separated N (default {DEFAULTS['sessions']})")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"measured seconds per configuration (default {DEFAULTS['duration']:g})")
    parser.add_argument("--think", type=float, default=None,
                        help=f"mean exponential think time in s (default {DEFAULTS['think']:g})")
    parser.add_argument("--slow-every", type=int, default=None,
                        help=f"every K-th interaction submits a slow job (default {DEFAULTS['slow_every']})")
    parser.add_argument("--slow", choices=("both", "on", "off"), default="both", help="runs with slow jobs on/off")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up interactions before the measurement (default {DEFAULTS['warmup']})")
    parser.add_argument("--quick", action="store_true", help="smoke-test settings (see above)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a configuration as JSON (child process)
    parser.add_argument("--one-out", type=Path, default=None, help=argparse.SUPPRESS)
    add_json_option(parser, "load")
    args = parser.parse_args(argv)

    if args.one is not None:
        result = run_one(json.loads(args.one))
        args.one_out.write_text(json.dumps(result))
        return

    base = QUICK if args.quick else DEFAULTS
    settings = {key: getattr(args, key) if getattr(args, key) is not None else base[key] for key in DEFAULTS}
    sessions = [int(s) for s in str(settings["sessions"]).split(",") if s.strip()]
    if not sessions or min(sessions) < 1 or settings["slow_every"] < 1 or settings["duration"] <= 0:
        parser.error("--sessions needs N >= 1, --slow-every K >= 1 and --duration > 0")
    fast_costs = {m: get_explainer(m).cost for m in FAST_METHODS + SLOW_METHODS}
    if any(m not in list_explainers() for m in fast_costs) or \
            any(fast_costs[m] != "fast" for m in FAST_METHODS) or any(fast_costs[m] != "slow" for m in SLOW_METHODS):
        raise SystemExit(f"the explainers' costs changed: {fast_costs}")
    slows = {"both": [False, True], "on": [True], "off": [False]}[args.slow]

    runs = []
    for n in sessions:
        for slow in slows:
            for engine in ENGINES:  # the two engines back to back, so drifting machine load hits both alike
                config = {"engine": engine, "model": args.model, "sessions": n, "slow": slow,
                          "duration": settings["duration"], "think": settings["think"],
                          "slow_every": settings["slow_every"], "warmup": settings["warmup"]}
                print(f"running {engine} N={n} slow={'on' if slow else 'off'} ...", file=sys.stderr, flush=True)
                runs.append(run_subprocess(config))
    rat = ratios(runs)
    verdict = bar(runs)
    print(f"model {args.model}, CPU, {settings['duration']:g} s per configuration, think {settings['think']:g} s, "
          f"slow job every {settings['slow_every']} interactions ({'/'.join(SLOW_METHODS)}), "
          f"fast requests = predict + {', '.join(FAST_METHODS)}")
    print_table(runs, rat, verdict)
    write_json(args.json, {
        "benchmark": "load",
        "model": args.model,
        "device": "cpu",
        "settings": {**settings, "sessions": sessions, "slow": args.slow, "quick": args.quick},
        "fast_methods": list(FAST_METHODS),
        "slow_methods": list(SLOW_METHODS),
        "slow_schedule": "session i submits a slow job at its interactions k = 1 + (i mod K) + j*K (K = slow_every)",
        "engines": {"baseline": BASELINE_MEANS, "scheduled": SCHEDULED_MEANS},
        "environment": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "runs": runs,
        "ratios": rat,
        "bar": verdict,
    })


if __name__ == "__main__":
    main()
