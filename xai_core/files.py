"""Files the core writes: the data directory, atomic JSON writes, cross-process locks."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where run-time results live: $XAI_DATA_DIR, else data/ in the project (ignored by git)."""
    return Path(os.environ.get("XAI_DATA_DIR", ROOT / "data")).expanduser()


def file_lock(path: Path, timeout: float = 60.0) -> FileLock:
    """A lock shared by every process that writes `path` (a `.lock` file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout)


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has no NaN: `null` means undefined) and numpy
    scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def strict_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of `value` (never NaN or Infinity: `finite_json`)."""
    return json.dumps(finite_json(value), indent=indent, allow_nan=False, default=str)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def update_json(path: Path, update: Any, default: dict[str, Any]) -> dict[str, Any]:
    """Read-modify-write a JSON file under its cross-process lock: `update(data)` changes `data` in place."""
    with file_lock(path):
        data = json.loads(path.read_text()) if path.is_file() else json.loads(json.dumps(default))
        update(data)
        write_json_atomic(path, data)
    return data
