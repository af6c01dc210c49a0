"""MAMMI annotation time: the demo model's feature block over N phantom probe images, matched in demo-clip.

    python benchmarks/mammi.py [--n 5000] [--layer features] [--device cpu] [--json [OUT]]
    python -m xai_core bench mammi --json

Stages: probe activations (generation + classifier forward), representatives (generation + image-text encoding),
matching. There is no peer implementation of MAMMI to compare against; the figure is the wall time per stage.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_json_option, write_json
from xai_core.mammi import annotate_neurons


def run(n: int, layer: str, device: str, vlm: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        summary = annotate_neurons("demo", layer, vlm, "demo", "phantom:train", n, Path(folder) / "bench.sqlite",
                                   device=device, progress=False)
        seconds = time.perf_counter() - start
    return {"n": n, "layer": layer, "vlm": vlm, "device": device, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "seconds": round(seconds, 1), "stages_s": summary["timings_s"],
            "neurons": summary["neurons"], "representative_images": summary["representative_images"],
            "validation": summary["validation"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--layer", choices=["features", "output"], default="features")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vlm", default="demo-clip")
    add_json_option(parser, "mammi")
    args = parser.parse_args(argv)
    result = run(args.n, args.layer, args.device, args.vlm)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result["stages_s"].items())
    print(f"MAMMI, demo {result['layer']} ({result['neurons']} neurons) x {result['n']} probe images on "
          f"{result['device']} ({result['torch_threads']} threads): {result['seconds']:.1f} s ({stages}); "
          f"{result['representative_images']} representative images encoded")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
