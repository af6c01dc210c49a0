"""The bundled demo models (trained by xai_core/training on phantom data), registered from the manifest."""

from __future__ import annotations

from typing import Any

import torch

from xai_core.models.base import ModelHandle
from xai_core.models.bundled import bundled_handle, manifest_entries
from xai_core.models.cards import InputSpec, ModelCard
from xai_core.models.densenet import build_demo_densenet
from xai_core.models.registry import register_model
from xai_core.models.segmenters import load_unet, segmenter_card
from xai_core.models.vlm import clip_card, load_demo_clip
from xai_core.phantom import FINDINGS

INTENDED_USE = (
    "Demonstration only: trained on synthetic phantom radiographs (xai_core/phantom), not on patients. "
    "Not for clinical use."
)
DEFAULT_ARCHITECTURE = {"kind": "densenet", "growth_rate": 16, "block_config": [3, 6, 12, 8], "num_init_features": 32}
# the demo family's names, registered before their weights exist so that errors can say how to get them
DEFAULT_ENTRIES: dict[str, dict[str, Any]] = {
    "demo": {"family": "classifier"},
    "demo-anatomy": {"family": "segmenter"},
    "demo-lesion": {"family": "segmenter", "labels": ["lesion"]},
    "demo-clip": {"family": "vlm"},
    "demo-shortcut": {"family": "classifier"},
    "demo-mimic": {"family": "classifier"},
    "demo-shortcut-mimic": {"family": "classifier"},
}
# how to make a classifier's weights where its manifest entry does not say
REBUILD = {
    "demo-shortcut": "python -m xai_core train classifier --shortcut 0.9",
    "demo-mimic": "python -m xai_core train mimic --model demo",
    "demo-shortcut-mimic": "python -m xai_core train mimic --model demo-shortcut --shortcut 0.9 "
                           "--name demo-shortcut-mimic",
}


def _card(name: str, entry: dict[str, Any]) -> ModelCard:
    labels = entry.get("labels", list(FINDINGS))
    spec = entry.get("input", {"channels": 1, "size": 224, "value_range": [-1024.0, 1024.0]})
    provenance = {
        "source": "trained by xai_core/training on synthetic phantom data",
        "weights_sha256": entry.get("sha256"),
        "command": entry.get("command"),
        "seeds": entry.get("seeds"),
        "data": entry.get("data"),
        "metrics": entry.get("metrics"),
        "architecture": entry.get("architecture", DEFAULT_ARCHITECTURE),
    }
    return ModelCard(
        name=name,
        labels=list(labels),
        input=InputSpec(spec["channels"], spec["size"], tuple(spec["value_range"])),
        cam_layer="features.norm5",
        feature_layer="features.norm5",
        thresholds=dict(entry.get("thresholds", dict.fromkeys(labels, 0.5))),
        provenance=provenance,
        intended_use=INTENDED_USE,
        weights_file=entry.get("file", f"{name}.pt"),
    )


def _load_demo(card: ModelCard, device: torch.device, allow_random_weights: bool) -> ModelHandle:
    architecture = {k: v for k, v in card.provenance["architecture"].items()
                    if k in ("growth_rate", "block_config", "num_init_features")}
    module = build_demo_densenet(len(card.labels), **architecture)
    rebuild = card.provenance.get("command") or REBUILD.get(card.name, "python -m xai_core train classifier")
    return bundled_handle(card, module, device, allow_random_weights, rebuild)


def register_demo_models() -> None:
    """Register every bundled model in the manifest, plus the default names so errors can say how to get them."""
    entries = manifest_entries()
    for name, default in DEFAULT_ENTRIES.items():
        entries.setdefault(name, dict(default))
    for name, entry in entries.items():
        family = entry.get("family")
        if family == "classifier":
            register_model(_card(name, entry), _load_demo)
        elif family == "segmenter":
            register_model(segmenter_card(name, entry), load_unet)
        elif family == "vlm":
            register_model(clip_card(name, entry), load_demo_clip)


register_demo_models()
