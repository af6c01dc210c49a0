"""The model registry: name -> card and loader. `xai_core.models` fills it with the built-in models on import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from xai_core.errors import UnknownNameError
from xai_core.models.base import ModelHandle
from xai_core.models.cards import ModelCard

Loader = Callable[[ModelCard, torch.device, bool], ModelHandle]


@dataclass
class RegistryEntry:
    """A registered model: its card and the function that builds it on a device."""

    card: ModelCard
    loader: Loader


_REGISTRY: dict[str, RegistryEntry] = {}


def register_model(card: ModelCard, loader: Loader) -> None:
    """Add a model to the registry (name must be unique)."""
    if card.name in _REGISTRY:
        raise ValueError(f"model '{card.name}' is already registered")
    _REGISTRY[card.name] = RegistryEntry(card=card, loader=loader)


def list_models(family: str | None = "classifier") -> list[str]:
    """Names of registered models, optionally of one family."""
    return [name for name, entry in _REGISTRY.items() if family is None or entry.card.family == family]


def get_card(name: str) -> ModelCard:
    """The card of a registered model; UnknownNameError naming the known models otherwise."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown model '{name}'; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].card


def load_model(name: str, device: torch.device | str = "cpu", *, allow_random_weights: bool = False) -> ModelHandle:
    """Build a registered model on a device, frozen and in eval mode."""
    card = get_card(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (tests, benchmarks) are the same in every process
        handle = _REGISTRY[name].loader(card, torch.device(device), allow_random_weights)
    handle.module.eval()
    if handle.device.type == "cpu":
        # oneDNN's convolutions and pooling run faster on channels-last weights (docs/benchmarks.md); logits agree
        # to float rounding. A 1-channel input is already channels-last, so callers need not convert.
        handle.module.to(memory_format=torch.channels_last)
    for parameter in handle.module.parameters():
        parameter.requires_grad_(False)
    return handle
