"""NEMt: a trained explanation network that gives a target's occlusion map in one forward pass."""

from __future__ import annotations

import threading

import torch

from xai_core.errors import MissingWeightsError
from xai_core.models.base import ModelHandle
from xai_core.models.bundled import MODELS_DIR, load_checked_state, manifest_entries
from xai_core.nemt.loss import nemt_loss
from xai_core.nemt.module import NEMtDecoder, keep_mask, random_kernel, smooth
from xai_core.nemt.pyramid import handle_pyramid, pyramid_forward, supports_pyramid, tap_channels

__all__ = ["NEMtDecoder", "available_for", "explanation_from_pixels", "explanation_from_taps", "handle_pyramid",
           "keep_mask", "load_decoder", "nemt_loss", "pyramid_forward", "random_kernel", "register_decoder",
           "smooth", "supports_pyramid", "tap_channels", "usable_for"]

_DECODERS: dict[tuple[str, str], NEMtDecoder] = {}
USABLE = "nemt-usable"
_LOCK = threading.Lock()


def _entry_for(model: str) -> tuple[str, dict] | None:
    for name, entry in manifest_entries().items():
        if entry.get("family") == "nemt" and entry.get("explains") == model:
            return name, entry
    return None


def load_decoder(handle: ModelHandle) -> NEMtDecoder:
    """The trained decoder for a classifier (loaded once per device, sha256 checked); a clear error otherwise.
    Classifiers loaded with random weights get a seeded random decoder, for tests only."""
    key = (handle.card.name, str(handle.device))
    with _LOCK:
        if key in _DECODERS:
            return _DECODERS[key]
        found = _entry_for(handle.card.name)
        if found is None and not handle.random_weights:
            raise MissingWeightsError(
                f"No NEMt module is trained for '{handle.card.name}'. Train one with "
                f"`python -m xai_core train nemt --model {handle.card.name}`.")
        if found is None:
            channels = tap_channels(handle.module, handle.card.input.channels)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                decoder = NEMtDecoder(channels, len(handle.card.labels), handle.card.input.channels,
                                      input_scale=input_scale(handle))
        else:
            _, entry = found
            decoder = NEMtDecoder.from_config(entry["decoder"])
            decoder.load_state_dict(load_checked_state(
                MODELS_DIR / entry["file"], entry["sha256"], f"NEMt for '{handle.card.name}'",
                f"python -m xai_core train nemt --model {handle.card.name}"))
        decoder = decoder.to(handle.device).eval().fold_norms()
        _DECODERS[key] = decoder
        return decoder


def register_decoder(handle: ModelHandle, decoder: NEMtDecoder) -> None:
    """Use this decoder for the handle's model on its device (e.g. one trained outside the manifest)."""
    with _LOCK:
        _DECODERS[(handle.card.name, str(handle.device))] = decoder.to(handle.device).eval()
    handle.forget(USABLE)


def available_for(model: str) -> bool:
    """True when a NEMt decoder for this classifier is bundled or registered."""
    return _entry_for(model) is not None or any(name == model for name, _ in _DECODERS)


def usable_for(handle: ModelHandle) -> bool:
    """A decoder can serve this classifier: it has a tappable pyramid and a trained (or, for random-weight test
    models, a seeded) decoder. Decided once per handle (the engine asks on every predict batch)."""
    return handle.memo(USABLE, lambda: supports_pyramid(handle.module)
                       and (available_for(handle.card.name) or handle.random_weights))


def input_scale(handle: ModelHandle) -> float:
    """Scales the classifier's input range to about [-1, 1] for the decoder's input skip."""
    lo, hi = handle.card.input.value_range
    return 1.0 / max(abs(lo), abs(hi), 1e-6)


class _PixelsToMap(torch.nn.Module):
    """Classifier pyramid and decoder as one module (x, targets) -> relevance [B, H, W], for export."""

    def __init__(self, classifier: torch.nn.Module, decoder: NEMtDecoder) -> None:
        super().__init__()
        self.classifier = classifier
        self.decoder = decoder

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _, taps = pyramid_forward(self.classifier, x)
        return 1 - keep_mask(self.decoder, taps, x, targets)[:, 0]


def explanation_from_pixels(handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The relevance map [B, H, W] of each image for its target: classifier and decoder as one ONNX Runtime graph
    on a CPU (then about as cheap as a plain forward: docs/benchmarks.md), else the PyTorch pyramid and decoder."""
    decoder = load_decoder(handle)
    graph = handle.onnx(f"nemt-{decoder.instance}", lambda: _PixelsToMap(handle.module, decoder),
                        labels=len(handle.card.labels))
    if graph is not None:
        return graph(x, targets)
    with torch.inference_mode():
        _, taps = handle_pyramid(handle, x)
    return explanation_from_taps(decoder, taps, x.to(handle.device), targets)


def explanation_from_taps(decoder: NEMtDecoder, taps: list[torch.Tensor], x: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    """Relevance e = 1 - m [B, H, W] in [0, 1] (not rescaled, so a negative target stays near empty)."""
    with torch.inference_mode():
        return 1 - keep_mask(decoder, taps, x, targets)[:, 0]
