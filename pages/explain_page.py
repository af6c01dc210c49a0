"""Explain page: pick a finding and methods, see the overlays side by side, download them."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ui import state
from xai_core.errors import XaiError
from xai_core.explainers import Explanation, get_explainer, list_explainers
from xai_core.imaging import read_mask_png
from xai_core.overlay import COLOUR_MAPS, blend, display_scale, maps_npz, outlines, png_bytes, shrink, top_region

DISPLAY_SIDE = 512
GRID_COLUMNS = 3


def default_methods(model: str) -> list[str]:
    """The fast methods (NEMt only where a trained module exists)."""
    return [m for m in list_explainers() if get_explainer(m).cost == "fast" and m != "random"
            and state.method_available(model, m)]


def _method_label(model: str, method: str) -> str:
    explainer = get_explainer(method)
    if explainer.cost == "fast":
        return method
    seconds = state.engine().expected_seconds(model, method)
    return f"{method} (slow, ~{seconds:.0f} s here)" if seconds else f"{method} (slow)"


def _figure(rgb: np.ndarray, contour: list[np.ndarray], truth: list[np.ndarray]) -> go.Figure:
    figure = go.Figure(go.Image(z=rgb, hoverinfo="skip"))
    for line in contour:
        figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", line={"color": "white", "width": 2},
                                    hoverinfo="skip", showlegend=False))
    for line in truth:
        figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", hoverinfo="skip", showlegend=False,
                                    line={"color": "#00e676", "width": 2, "dash": "dot"}))
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=360, xaxis={"visible": False},
                         yaxis={"visible": False})
    return figure


def _truth_outlines(finding: str, shape: tuple[int, int], scale: float) -> list[np.ndarray]:
    path = (st.session_state.get("case_masks") or {}).get(finding)
    if path is None:
        return []
    mask = read_mask_png(path)
    if mask.shape != shape:
        return []
    return [line * scale for line in outlines(mask)]


def _controls() -> dict:
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        opacity = st.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
    with c2:
        colour_map = st.selectbox("Colour map", list(COLOUR_MAPS), key="colour_map")
    with c3:
        mode = st.radio("Colour range", ["per map", "fixed"], key="range_mode", horizontal=True,
                        help="per map: each map from its own minimum to maximum. fixed: 0 to 1 for maps that are "
                             "absolute (NEMt, random), 0 to the map's maximum otherwise, so weak maps look weak.")
    with c4:
        contour = st.toggle("Top-p% contour", value=True, key="contour")
        percent = st.slider("p (%)", 1, 50, 10, key="contour_p", disabled=not contour)
    return {"opacity": opacity, "colour_map": colour_map, "mode": mode, "contour": contour, "percent": percent}


def _overlay(case, explanation: Explanation, settings: dict, truth: bool) -> tuple[go.Figure, bytes]:
    full = explanation.resized_to_image(case.pixels.shape)
    pixels = shrink(case.pixels, DISPLAY_SIDE)
    heat = display_scale(shrink(full, DISPLAY_SIDE), settings["mode"], get_explainer(explanation.method).unit_range)
    rgb = blend(pixels, heat, settings["opacity"], settings["colour_map"])
    contour = outlines(top_region(heat, settings["percent"])) if settings["contour"] else []
    scale = pixels.shape[0] / case.pixels.shape[0]
    truth_lines = _truth_outlines(explanation.target, case.pixels.shape, scale) if truth else []
    return _figure(rgb, contour, truth_lines), png_bytes(rgb)


def render() -> None:
    """The Explain page."""
    st.title("Explain")
    case = state.case_or_message()
    if case is None:
        return
    model = state.current_model()
    prediction = state.prediction_or_message(case, model)
    if prediction is None:
        return
    labels = list(prediction.labels)
    ranked = [r["label"] for r in prediction.ranked()]
    if st.session_state.get("target") not in labels:
        st.session_state["target"] = ranked[0]
    left, right = st.columns([1, 2])
    with left:
        st.selectbox("Finding to explain", labels, key="target",
                     format_func=lambda n: f"{n} ({prediction.probabilities[labels.index(n)]:.2f})",
                     help="Defaults to the top predicted finding; any label can be explained.")
    available = [m for m in list_explainers() if state.method_available(model, m)]
    if "methods" not in st.session_state or not set(st.session_state["methods"]) <= set(available):
        st.session_state["methods"] = default_methods(model)
    with right:
        st.multiselect("Methods", available, key="methods", format_func=lambda m: _method_label(model, m),
                       help="Fast methods take well under a second; slow ones (marked) can take many seconds "
                            "on CPU.")
    settings = _controls()
    phantom = st.session_state.get("case_source") == "phantom" and bool(st.session_state.get("case_masks"))
    truth = st.toggle("Ground-truth outline (phantom cases)", value=phantom, key="truth", disabled=not phantom)
    target, methods = st.session_state["target"], st.session_state["methods"]
    if not methods:
        st.info("Choose at least one method.")
        return
    explanations: dict[str, Explanation] = {}
    columns = st.columns(min(GRID_COLUMNS, len(methods)))
    for i, method in enumerate(methods):
        with columns[i % len(columns)]:
            try:
                with st.spinner(f"{method}…"):
                    explanation = state.engine().explain(case, model, method, target)
            except XaiError as exc:
                st.error(f"{method}: {exc}")
                continue
            explanations[method] = explanation
            figure, png = _overlay(case, explanation, settings, truth)
            st.markdown(f"**{method}** · {explanation.seconds * 1000:.0f} ms")
            st.plotly_chart(figure, width="stretch", key=f"overlay-{method}",
                            config={"displayModeBar": False})
            st.download_button("Overlay PNG", png, file_name=f"{case.sha256[:12]}_{target}_{method}.png",
                               mime="image/png", key=f"png-{method}", icon=":material/download:")
    st.session_state["explanations"] = {m: e for m, e in explanations.items()}
    if explanations:
        npz = maps_npz({m: e.map for m, e in explanations.items()}, model=model, target=target, sha256=case.sha256)
        st.download_button("All maps (NPZ, model-input resolution)", npz,
                           file_name=f"{case.sha256[:12]}_{target}_maps.npz", mime="application/octet-stream",
                           key="npz", icon=":material/download:")
    if prediction.random_weights:
        st.warning("This model has random weights (testing mode): its maps mean nothing.")


render()
