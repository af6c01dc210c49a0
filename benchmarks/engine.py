"""Predict throughput with concurrent callers vs serial calls, and resident memory with one DenseNet121 loaded.

    python benchmarks/engine.py [--model xrv-densenet121-all] [--images 64] [--callers 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.engine import Engine
from xai_core.imaging import Radiograph


def rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images(n: int, size: int = 512) -> list[Radiograph]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pixels = rng.random((size, size), dtype=np.float32)
        out.append(Radiograph(pixels=pixels, raw=pixels, meta={"window": [0.5, 1.0]}, sha256=f"bench-{i}",
                              source_name=f"b{i}"))
    return out


def run(model: str, n_images: int, callers: int) -> dict:
    engine = Engine("cpu", allow_random_weights=True)
    engine.model(model)
    rss_loaded = rss_mb()
    warm = images(2)
    for r in warm:
        engine.predict(r, model)
    batch = images(n_images)

    engine.cache.clear()
    start = time.perf_counter()
    for r in batch:
        engine.predict(r, model)
    serial_s = time.perf_counter() - start
    serial_forwards = engine.stats.forwards[model]

    engine.cache.clear()
    forwards_before = engine.stats.forwards[model]
    chunks = [batch[i::callers] for i in range(callers)]
    barrier = threading.Barrier(callers)

    def worker(chunk: list[Radiograph]) -> None:
        barrier.wait()
        for r in chunk:
            engine.predict(r, model)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent_s = time.perf_counter() - start
    concurrent_forwards = engine.stats.forwards[model] - forwards_before
    return {
        "model": model,
        "images": n_images,
        "callers": callers,
        "serial_images_per_s": n_images / serial_s,
        "concurrent_images_per_s": n_images / concurrent_s,
        "concurrent_over_serial": serial_s / concurrent_s,
        "serial_forwards": serial_forwards - 2,
        "concurrent_forwards": concurrent_forwards,
        "rss_mb_after_load": rss_loaded,
        "rss_mb_after_run": rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="xrv-densenet121-all")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--callers", type=int, default=8)
    add_json_option(parser, "engine")
    args = parser.parse_args(argv)
    result = run(args.model, args.images, args.callers)
    print(f"model {result['model']}, {result['images']} images, {result['callers']} concurrent callers (CPU)")
    print(f"  serial      {result['serial_images_per_s']:7.2f} images/s  ({result['serial_forwards']} forwards)")
    print(f"  concurrent  {result['concurrent_images_per_s']:7.2f} images/s  "
          f"({result['concurrent_forwards']} forwards)")
    print(f"  ratio concurrent/serial: {result['concurrent_over_serial']:.2f}x")
    print(f"  RSS after load {result['rss_mb_after_load']:.0f} MB, after run {result['rss_mb_after_run']:.0f} MB, "
          f"peak {result['peak_rss_mb']:.0f} MB (bar: < 1500 MB)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
