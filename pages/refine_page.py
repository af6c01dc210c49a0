"""Refine & certainty page: the finding's anatomy region, the original vs SegX map, and SegU certainty."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ui import layout, state
from ui.methods import method_name, methods_help
from xai_core.display import scale_map
from xai_core.errors import XaiError
from xai_core.explainers import get_explainer, list_explainers
from xai_core.metrics import iou_curve
from xai_core.models import list_models
from xai_core.overlay import blend, outlines

SEGMENTERS = list_models("segmenter")


def _panel(rgb: np.ndarray, lines: list[np.ndarray], title: str) -> go.Figure:
    figure = go.Figure(go.Image(z=rgb, hoverinfo="skip"))
    for line in lines:
        figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", hoverinfo="skip", showlegend=False,
                                    line={"color": "#00e676", "width": 2}))
    figure.update_layout(title=title, margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=380,
                         xaxis={"visible": False}, yaxis={"visible": False})
    return figure


def _gauge(value: float, threshold: float | None) -> go.Figure:
    figure = go.Figure(go.Indicator(
        mode="gauge+number", value=value, number={"valueformat": ".2f"},
        gauge={"axis": {"range": [0, 1]}, "bar": {"color": "#1f77b4"},
               **({"threshold": {"line": {"color": "black", "width": 3}, "value": threshold}} if threshold else {})},
        title={"text": "SegU certainty"}))
    figure.update_layout(height=230, margin={"l": 20, "r": 20, "t": 40, "b": 0})
    return figure


def _iou_curve(relevance: np.ndarray, region: np.ndarray) -> go.Figure:
    ts, ious = iou_curve(relevance, region)
    figure = go.Figure(go.Scatter(x=ts, y=ious[0], mode="lines", fill="tozeroy"))
    figure.update_layout(xaxis_title="threshold on the min-max scaled map", yaxis_title="IoU with the region",
                         height=230, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis={"range": [0, 1]})
    return figure


def render() -> None:
    """The Refine & certainty page."""
    layout.start("Refine & certainty")
    case = state.case_or_message()
    if case is None:
        return
    model = state.current_model()
    prediction = state.prediction_or_message(case, model)
    if prediction is None:
        return
    engine = state.engine()
    labels = list(prediction.labels)
    state.ensure_target(prediction)
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        st.selectbox("Finding", labels, key="target", help="The same finding as on the other pages.")
    with c2:
        methods = [m for m in list_explainers() if state.method_available(model, m)]
        if st.session_state.get("refine_method") not in methods:
            st.session_state["refine_method"] = "gradcam" if "gradcam" in methods else methods[0]
        st.selectbox("Method", methods, key="refine_method", format_func=method_name,
                     help=methods_help(methods, {m: get_explainer(m).cost for m in methods}))
    if st.session_state.get("segmenter") not in SEGMENTERS:  # the phantom's anatomy for demo, real anatomy else
        st.session_state["segmenter"] = "demo-anatomy" if model.startswith("demo") else "xrv-pspnet"
    with c3:
        st.selectbox("Anatomy model", SEGMENTERS, key="segmenter",
                     help="demo-anatomy knows the synthetic phantom; xrv-pspnet (torchxrayvision, 14 structures) "
                          "is for real radiographs and needs its weights file")
    with c4:
        mode = st.radio("SegX mode", ["soft", "binary"], key="segx_mode", horizontal=True,
                        help="soft: the map inside the region, rescaled; binary: the top-p% pixels inside it")
        percent = st.slider("p (%)", 1, 30, key="segx_p")
    target, method, segmenter = st.session_state["target"], st.session_state["refine_method"], \
        st.session_state["segmenter"]
    try:
        with st.spinner("Segmenting and refining…"):
            view = engine.refine_view(case, model, method, target, segmenter=segmenter, mode=mode, percent=percent)
    except XaiError as exc:
        st.error(f"Refinement is not available here: {exc}")
        return
    explanation, region, refined, scores, pixels = (view.explanation, view.region, view.refined, view.certainty,
                                                    view.pixels)
    if region.fallback:
        st.warning(f"No anatomy is defined for {target}: both lungs are used as its region.")
    lines = outlines(region.mask)
    finding = state.finding_summary(prediction, target)
    if not finding["positive"]:
        st.caption(f":material/block: {target} is below its operating point ({finding['probability']:.2f} < "
                   f"{finding['threshold']:.2f}): the model does not report it, so its map and certainty say "
                   "little.")
    display = scale_map(explanation.map, "absolute", get_explainer(method).unit_range)
    if display.empty:
        st.warning(f"This map is empty: {display.reason}.", icon=":material/blur_off:")
    left, right = st.columns(2)
    with left:
        rgb = blend(pixels, display.heat, 0.5)
        st.plotly_chart(_panel(rgb, lines, f"{method_name(method)}: original (0 to {display.high:.3g})"),
                        width="stretch", key="original")
    with right:
        rgb = blend(pixels, refined, 0.5)
        st.plotly_chart(_panel(rgb, lines, f"SegX ({mode}) inside {' + '.join(region.structures)}"),
                        width="stretch", key="refined")
    g, m, c = st.columns([1, 1, 1])
    with g:
        st.plotly_chart(_gauge(scores["certainty"], scores.get("threshold")), width="stretch", key="gauge")
        if "verdict" in scores:
            text = "trust" if scores["verdict"] == "trust" else "doubt"
            st.markdown(f"Calibrated verdict: **{text}** (threshold {scores['threshold']:.2f})")
        else:
            st.caption(f"No calibration stored for {model} / {method}: run `python -m xai_core segu --model {model} "
                       f"--method {method} --calibrate`.")
    with m:
        st.metric("cIoU (top-p% vs region)", f"{scores['ciou']:.3f}")
        st.metric("cAUITC", f"{scores['cauitc']:.3f}")
        st.metric("Inside-mass", f"{scores['inside_mass']:.3f}")
    with c:
        st.plotly_chart(_iou_curve(explanation.map, region.mask), width="stretch", key="iou_curve")


render()
