"""The one owner of the bundled weights (`assets/models/`) and their manifest.

The manifest (`manifest.json`) is committed with the weights: it records what our training commands produced (file,
sha256, command, seeds, data, metrics). It is read through `manifest_entries` (parsed once per file version) and
written only by `record_entry`, atomically (temp file + replace) under a cross-process file lock. SegU calibrations
never go into it: they have their own files (`xai_core.certainty`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai_core.errors import MissingWeightsError, ModelError
from xai_core.files import update_json
from xai_core.models.base import ModelCard, ModelHandle, sha256_file

MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"
MANIFEST = MODELS_DIR / "manifest.json"
NOTE = "Weights trained by xai_core/training on synthetic phantom data only."

_cache_lock = threading.Lock()
_cache: tuple[tuple[int, int], dict[str, Any]] | None = None


def read_manifest() -> dict[str, Any]:
    """The whole manifest (a fresh copy); an empty one where the file does not exist."""
    global _cache
    try:
        stat = MANIFEST.stat()
    except FileNotFoundError:
        return {"note": NOTE, "models": {}}
    version = (stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        if _cache is None or _cache[0] != version:
            try:
                _cache = (version, json.loads(MANIFEST.read_text()))
            except json.JSONDecodeError as exc:
                raise ModelError(f"{MANIFEST} is not valid JSON ({exc}); restore it from the repository.") from exc
        return json.loads(json.dumps(_cache[1]))


def manifest_entries() -> dict[str, dict[str, Any]]:
    """Manifest entry per bundled model name."""
    return read_manifest().get("models", {})


def record_entry(name: str, record: dict[str, Any]) -> None:
    """Replace one model's manifest entry (read-modify-write under the cross-process lock, atomic write)."""
    def replace(manifest: dict[str, Any]) -> None:
        manifest.setdefault("models", {})[name] = record

    update_json(MANIFEST, replace, {"note": NOTE, "models": {}})


def load_checked_state(path: Path, expected_sha256: str | None, what: str, rebuild: str) -> dict[str, torch.Tensor]:
    """A bundled weights file as a float32 state dict, after checking its sha256 against the manifest."""
    if not path.is_file():
        raise MissingWeightsError(f"Weights for {what} are missing: expected {path}. They are committed with the "
                                  f"project; to rebuild them run `{rebuild}`.")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise ModelError(f"{path} does not match the sha256 in {MANIFEST}; the file is damaged or was replaced.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def bundled_handle(card: ModelCard, module: nn.Module, device: torch.device, allow_random_weights: bool,
                   rebuild: str) -> ModelHandle:
    """Load a bundled weights file into `module` (sha256-checked); random weights only where allowed."""
    path = MODELS_DIR / (card.weights_file or f"{card.name}.pt")
    if not path.is_file() and allow_random_weights:
        return ModelHandle(card=card, module=module.to(device), device=device, random_weights=True)
    module.load_state_dict(load_checked_state(path, card.provenance.get("weights_sha256"), f"'{card.name}'",
                                              rebuild))
    return ModelHandle(card=card, module=module.to(device), device=device)
