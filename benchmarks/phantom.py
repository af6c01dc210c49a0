"""Phantom generator speed: cases/s at 256 px, one process and a pool over all cores.

    python benchmarks/phantom.py [--n 1000] [--size 256] [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.phantom import generate_case


def _one(args: tuple[int, int, bool]) -> int:
    index, size, with_gaze = args
    case = generate_case("train", index, size=size)
    return len(case.fixations) if with_gaze else len(case.labels)


def _rates(n: int, size: int, workers: int, with_gaze: bool) -> tuple[float, float]:
    """Cases/s in this process and over a pool of `workers` processes."""
    start = time.perf_counter()
    for i in range(n // 4):
        _one((i, size, with_gaze))
    serial = (n // 4) / (time.perf_counter() - start)
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_one, [(i, size, with_gaze) for i in range(workers * 4)])
        start = time.perf_counter()
        pool.map(_one, [(i, size, with_gaze) for i in range(n)], chunksize=32)
        parallel = n / (time.perf_counter() - start)
    return serial, parallel


def run(n: int, size: int, workers: int) -> dict:
    """Two paths: training streams (image, masks, labels, report; gaze never drawn) and full cases (gaze drawn
    too, as the writers and the gaze metrics do)."""
    generate_case("train", 0, size=size)  # warm the per-size caches
    serial, parallel = _rates(n, size, workers, with_gaze=False)
    serial_gaze, parallel_gaze = _rates(n, size, workers, with_gaze=True)
    return {"size": size, "n": n, "workers": workers, "cpu_count": os.cpu_count(),
            "serial_cases_per_s": serial, "parallel_cases_per_s": parallel,
            "serial_cases_with_gaze_per_s": serial_gaze, "parallel_cases_with_gaze_per_s": parallel_gaze,
            "bar_cases_per_s": 200}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_json_option(parser, "phantom")
    args = parser.parse_args(argv)
    result = run(args.n, args.size, args.workers)
    for label, key in (("training stream (no gaze)", "cases"), ("full cases (with gaze)", "cases_with_gaze")):
        print(f"phantom generator at {result['size']} px, {label}: {result[f'serial_{key}_per_s']:.0f} cases/s in "
              f"one process, {result[f'parallel_{key}_per_s']:.0f} cases/s with {result['workers']} processes "
              f"(bar: >= {result['bar_cases_per_s']} on 2 cores)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
