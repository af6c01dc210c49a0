"""Phantom generator speed: cases/s at 256 px, one process and a pool over all cores.

    python benchmarks/phantom.py [--n 1000] [--size 256] [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai_core.phantom import generate_case


def _one(args: tuple[int, int]) -> int:
    index, size = args
    return len(generate_case("train", index, size=size).labels)


def run(n: int, size: int, workers: int) -> dict:
    generate_case("train", 0, size=size)  # warm the per-size caches
    start = time.perf_counter()
    for i in range(n // 4):
        _one((i, size))
    serial = (n // 4) / (time.perf_counter() - start)
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_one, [(i, size) for i in range(workers * 4)])
        start = time.perf_counter()
        pool.map(_one, [(i, size) for i in range(n)], chunksize=32)
        parallel = n / (time.perf_counter() - start)
    return {"size": size, "n": n, "workers": workers, "cpu_count": os.cpu_count(),
            "serial_cases_per_s": serial, "parallel_cases_per_s": parallel, "bar_cases_per_s": 200}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, nargs="?", const=Path("results/bench_phantom.json"), default=None,
                        help="also write the results as JSON (default file: results/bench_phantom.json)")
    args = parser.parse_args(argv)
    result = run(args.n, args.size, args.workers)
    print(f"phantom generator at {result['size']} px: {result['serial_cases_per_s']:.0f} cases/s in one process, "
          f"{result['parallel_cases_per_s']:.0f} cases/s with {result['workers']} processes "
          f"(bar: >= {result['bar_cases_per_s']} on 2 cores)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
