"""What the Concepts page asks of the core, cached per browser-independent inputs (no maths here)."""

from __future__ import annotations

import streamlit as st

from ui.state import engine
from xai_core.errors import XaiError
from xai_core.mammi import representative_overlays, weights_tag


@st.cache_data(max_entries=16, show_spinner=False)
def _overlays(model: str, weights: str, layer: str, neuron: int, probe: str, ids: tuple[str, ...],
              opacity: float) -> list[bytes]:
    eng = engine()
    return representative_overlays(eng.model(model), layer, neuron, probe, list(ids), opacity=opacity,
                                   lock=eng.lock(model))


def neuron_overlays(model: str, layer: str, neuron: int, probe: str, ids: list[str],
                    opacity: float) -> list[bytes] | None:
    """PNGs of a neuron's activation map overlaid on its representative probing images (cached per model weights),
    or None when they cannot be made here (e.g. a folder probe from another machine)."""
    try:
        return _overlays(model, weights_tag(engine().model(model)), layer, int(neuron), probe, tuple(ids),
                         float(opacity))
    except XaiError:
        return None
