"""What every benchmark script shares: the `--json [FILE]` option and writing its results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_json_option(parser: argparse.ArgumentParser, name: str) -> None:
    """`--json [FILE]`: also write the results as JSON (default file: results/bench_<name>.json)."""
    default = Path(f"results/bench_{name}.json")
    parser.add_argument("--json", type=Path, nargs="?", const=default, default=None,
                        help=f"also write the results as JSON (default file: {default})")


def write_json(path: Path | None, results: Any) -> None:
    """Write `results` to `path` (creating its folder); nothing when no --json was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
