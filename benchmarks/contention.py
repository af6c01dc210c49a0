"""One reviewer's fast work while another's slow explanation runs on the same model: predict + Grad-CAM on a new
image, alone and while a thread runs XRAI then Score-CAM on another, on the scheduled engine and on the FIFO
baseline of benchmarks/load.py (every explanation at one priority).

    python benchmarks/contention.py [--model demo] [--repeats 5] [--json OUT]

Bar (issue 30): under contention the fast request returns within max(0.3 s, 5x its median time alone).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from benchmarks.load import FifoEngine
from xai_core.engine import Engine
from xai_core.phantom import generate_case
from xai_core.radiograph import Radiograph

TARGET = "Effusion"


def image(index: int) -> Radiograph:
    return Radiograph.from_array(generate_case("test", index, seed=11, size=256).image, source_name=f"c{index}")


def fast_request(engine: Engine, model: str, radiograph: Radiograph) -> float:
    start = time.perf_counter()
    engine.predict(radiograph, model)
    engine.explain(radiograph, model, "gradcam", TARGET)
    return time.perf_counter() - start


def measure(engine: Engine, model: str, repeats: int, first_image: int) -> dict[str, Any]:
    """Median fast-request seconds alone, then each fast request's seconds while XRAI + Score-CAM run."""
    engine.model(model)
    fast_request(engine, model, image(first_image))  # warm-up
    engine.explain(image(first_image + 1), model, "xrai", TARGET)
    alone = [fast_request(engine, model, image(first_image + 2 + i)) for i in range(repeats)]
    under: list[float] = []
    slow_seconds: list[float] = []
    for i in range(repeats):
        busy = image(first_image + 100 + i)
        started = threading.Event()

        def slow(radiograph: Radiograph = busy, started: threading.Event = started) -> None:
            start = time.perf_counter()
            started.set()
            engine.explain(radiograph, model, "xrai", TARGET)
            engine.explain(radiograph, model, "scorecam", TARGET)
            slow_seconds.append(time.perf_counter() - start)

        thread = threading.Thread(target=slow)
        thread.start()
        started.wait()
        time.sleep(0.3)  # the slow job holds the model by now
        under.append(fast_request(engine, model, image(first_image + 200 + i)))
        thread.join()
    median_alone = float(np.median(alone))
    bound = max(0.3, 5 * median_alone)
    return {"alone_median_s": median_alone, "under_contention_s": under, "worst_s": max(under),
            "slow_job_s": slow_seconds, "bound_s": bound, "met": max(under) <= bound}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--repeats", type=int, default=5)
    add_json_option(parser, "contention")
    args = parser.parse_args(argv)
    results = {"model": args.model,
               "scheduled": measure(Engine("cpu"), args.model, args.repeats, 0),
               "baseline": measure(FifoEngine("cpu"), args.model, args.repeats, 1000)}
    for kind in ("scheduled", "baseline"):
        r = results[kind]
        print(f"{kind:<10} alone {r['alone_median_s']:.3f} s; under XRAI + Score-CAM worst {r['worst_s']:.3f} s "
              f"(all: {', '.join(f'{s:.3f}' for s in r['under_contention_s'])}); bound {r['bound_s']:.3f} s: "
              f"{'met' if r['met'] else 'NOT met'}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
