"""Refine & certainty page: the original map beside its SegX refinement to the finding's anatomy, and for a
finding the model reports, SegU in plain words: whether the explanation lies on the suspected lesion, and the
calibrated probability that the finding is right."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ui import layout, state
from ui.methods import method_name, methods_help
from xai_core.certainty import SEGU_PERCENT, segmenter_options
from xai_core.display import scale_map
from xai_core.errors import XaiError
from xai_core.explainers import get_explainer, list_explainers
from xai_core.models import list_models
from xai_core.overlay import blend, outlines
from xai_core.segx import LESION_SEGMENTERS

ANATOMY_SEGMENTERS = [name for name in list_models("segmenter") if name not in LESION_SEGMENTERS]
ANATOMY_COLOUR, LESION_COLOUR = "#00e676", "#ff4081"
HELP = {
    "certainty": "SegU: the probability that this finding is right, given where its explanation lies. Calibrated "
                 "for this model, method and region on phantom validation cases: per finding where that finding "
                 "had enough true and false positives, pooled over findings otherwise.",
    "probability": "The model's own probability for this finding. It reports the finding at or above its "
                   "operating point ({threshold:.2f}).",
    "ciou": f"cIoU: the overlap (intersection over union) of the map's strongest {SEGU_PERCENT:g}% of pixels with "
            "the SegU region. 1: they are exactly the region; 0: none of them lies in it.",
    "cauitc": "cAUITC: the overlap of the map with the SegU region at every cut-off of the map, averaged (the area "
              "under the curve on the right). Higher: the relevance lies on the region whatever the cut-off.",
    "inside_mass": "Inside-mass: the share of all the map's relevance that lies inside the SegU region. It "
                   "tolerates a map shifted by a few pixels.",
    "segu_region": "Where SegU looks for the finding. A lesion segmenter outlines the suspected lesions (every "
                   "finding's, as the SegU paper does); an anatomy model gives the finding's anatomy, which cannot "
                   "tell a right finding from a wrong one inside the same lungs.",
}
VERDICTS = {
    ("lesion", "trust"): "The explanation lies on the suspected lesion: likely right.",
    ("lesion", "doubt"): "The explanation lies elsewhere: doubt this finding.",
    ("anatomy", "trust"): "The explanation lies on the finding's anatomy ({region}): likely right.",
    ("anatomy", "doubt"): "The explanation lies outside the finding's anatomy ({region}): doubt this finding.",
}


def _number(value: float, form: str = ".3f") -> str:
    return format(value, form) if value is not None and math.isfinite(value) else "n/a"


def _panel(rgb: np.ndarray, lines: list[tuple[list[np.ndarray], str]], title: str) -> go.Figure:
    figure = go.Figure(go.Image(z=rgb, hoverinfo="skip"))
    for group, colour in lines:
        for line in group:
            figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", hoverinfo="skip",
                                        showlegend=False, line={"color": colour, "width": 2}))
    figure.update_layout(title=title, margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=380,
                         xaxis={"visible": False}, yaxis={"visible": False})
    return figure


def _gauges(finding: dict, scores: dict) -> go.Figure:
    """The model's probability against its operating point and, where calibrated, the probability that the
    finding is right against its verdict threshold."""
    dials = [("The model's probability", finding["probability"], finding["threshold"])]
    if scores["calibrated"] and math.isfinite(scores["certainty"]):
        dials.append(("Probability the finding is right", scores["certainty"], scores["threshold"]))
    figure = go.Figure()
    for i, (title, value, mark) in enumerate(dials):
        figure.add_trace(go.Indicator(
            mode="gauge+number", value=value, number={"valueformat": ".0%"}, title={"text": title},
            domain={"x": [i / len(dials), (i + 1) / len(dials) - 0.05], "y": [0, 1]},
            gauge={"axis": {"range": [0, 1], "tickformat": ".0%"}, "bar": {"color": "#1f77b4"},
                   "threshold": {"line": {"color": "black", "width": 3}, "value": mark}}))
    figure.update_layout(height=230, margin={"l": 20, "r": 20, "t": 40, "b": 0})
    return figure


def _iou_curve(curve: tuple[np.ndarray, np.ndarray]) -> go.Figure:
    thresholds, ious = curve
    figure = go.Figure(go.Scatter(x=thresholds, y=ious, mode="lines", fill="tozeroy"))
    figure.update_layout(xaxis_title="cut-off on the min-max scaled map", yaxis_title="IoU with the SegU region",
                         height=230, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis={"range": [0, 1]})
    return figure


def _region_name(segmenter: str) -> str:
    return f"{segmenter}: suspected lesions" if segmenter in LESION_SEGMENTERS else f"{segmenter}: anatomy"


def _segu(view, target: str, model: str, method: str, mark: str | None = None) -> None:
    """SegU's verdict, the two probabilities and the raw scores of a finding the model reports; `mark` ('unreliable:
    out of domain') on the verdict and the certainty where the guard fired."""
    scores, finding = view.certainty, view.finding
    region = " + ".join(scores["region"])
    if "verdict" in scores:
        text = VERDICTS[(scores["region_kind"], scores["verdict"])].format(region=region)
        if mark:  # never a green verdict on an image the model was not trained for
            st.warning(f"**{mark.capitalize()}.** {text}", icon=":material/report:")
        else:
            (st.success if scores["verdict"] == "trust" else st.warning)(
                text, icon=":material/check_circle:" if scores["verdict"] == "trust" else ":material/help:")
    else:
        st.info(f"No verdict for {target}: {scores['calibration_note']}. The scores below are not probabilities.",
                icon=":material/info:")
    if scores["empty_region"]:
        st.caption(f"{scores['segmenter']} found no suspected lesion on this image, so every score is 0: the "
                   "explanation lies on no lesion.")
    g, p = st.columns([2, 1])
    with g:
        st.plotly_chart(_gauges(finding, scores), width="stretch", key="gauge")
    with p:
        st.metric("Probability the finding is right" + (f" ({mark})" if mark else ""),
                  _number(scores["certainty"], ".0%"), help=HELP["certainty"])
        st.metric("Finding probability (the model's)", _number(finding["probability"], ".0%"),
                  help=HELP["probability"].format(threshold=finding["threshold"]))
        if scores["calibrated"]:
            st.caption(f"Verdict threshold for {target}: {_number(scores['threshold'], '.0%')}. "
                       f"{scores['calibration_note']}")
    m, c = st.columns([1, 2])
    with m:
        st.metric("cIoU", _number(scores["ciou"]), help=HELP["ciou"])
        st.metric("cAUITC", _number(scores["cauitc"]), help=HELP["cauitc"])
        st.metric("Inside-mass", _number(scores["inside_mass"]), help=HELP["inside_mass"])
    with c:
        st.plotly_chart(_iou_curve(view.iou_curve), width="stretch", key="iou_curve")
    st.caption(f"SegU region: {_region_name(scores['segmenter'])} (outlined in pink); model {model}, "
               f"{method_name(method)}.")


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
    c1, c2, c3, c4, c5 = st.columns(5)
    with c1:
        st.selectbox("Finding", labels, key="target", help="The same finding as on the other pages.")
    with c2:
        methods = [m for m in list_explainers() if state.method_available(model, m)]
        if st.session_state.get("refine_method") not in methods:
            st.session_state["refine_method"] = "gradcam" if "gradcam" in methods else methods[0]
        st.selectbox("Method", methods, key="refine_method", format_func=method_name,
                     help=methods_help(methods, {m: get_explainer(m).cost for m in methods}))
    if st.session_state.get("segmenter") not in ANATOMY_SEGMENTERS:  # the phantom's anatomy for demo, real else
        st.session_state["segmenter"] = "demo-anatomy" if model.startswith("demo") else "xrv-pspnet"
    with c3:
        st.selectbox("Anatomy model (SegX)", ANATOMY_SEGMENTERS, key="segmenter",
                     help="demo-anatomy knows the synthetic phantom; xrv-pspnet (torchxrayvision, 14 structures) "
                          "is for real radiographs and needs its weights file")
    regions = segmenter_options(model)
    if st.session_state.get("segu_segmenter") not in regions:
        st.session_state["segu_segmenter"] = regions[0]
    with c4:
        st.selectbox("SegU region", regions, key="segu_segmenter", format_func=_region_name,
                     help=HELP["segu_region"])
    with c5:
        mode = st.radio("SegX mode", ["soft", "binary"], key="segx_mode", horizontal=True,
                        help="soft: the map inside the region, rescaled; binary: the top-p% pixels inside it")
        percent = st.slider("SegX p (%)", 1, 30, key="segx_p",
                            help=f"binary SegX keeps the map's top p% pixels; SegU always uses "
                                 f"{SEGU_PERCENT:g}%, as its calibrations do")
    target, method = st.session_state["target"], st.session_state["refine_method"]
    try:
        with st.spinner("Segmenting and refining…"):
            view = engine.refine_view(case, model, method, target, segmenter=st.session_state["segmenter"],
                                      mode=mode, percent=percent, segu_segmenter=st.session_state["segu_segmenter"])
    except XaiError as exc:
        st.error(f"Refinement is not available here: {exc}")
        return
    if view.region.fallback:
        st.warning(f"No anatomy is defined for {target}: both lungs are used as its region.")
    mark = state.unreliable(case, model)
    if mark:
        st.caption(f":red[:material/report: **Maps, SegX and SegU {mark}**]: shown for inspection only.")
    anatomy_lines = (outlines(view.region.mask), ANATOMY_COLOUR)
    lesion_lines = [(outlines(view.segu_region.mask), LESION_COLOUR)] if view.segu_region is not None else []
    display = scale_map(view.explanation.map, "absolute", get_explainer(method).unit_range)
    if display.empty:
        st.warning(f"This map is empty: {display.reason}.", icon=":material/blur_off:")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(_panel(blend(view.pixels, display.heat, 0.5), [anatomy_lines, *lesion_lines],
                               f"{method_name(method)}: original (0 to {display.high:.3g})"),
                        width="stretch", key="original")
    with right:
        st.plotly_chart(_panel(blend(view.pixels, view.refined, 0.5), [anatomy_lines],
                               f"SegX ({mode}) inside {' + '.join(view.region.structures)}"),
                        width="stretch", key="refined")
    if view.certainty is None:
        st.info(f"{target} is below its operating point ({view.finding['probability']:.2f} < "
                f"{view.finding['threshold']:.2f}): the model does not report it, so SegU gives no verdict and no "
                "certainty for it.", icon=":material/block:")
        return
    _segu(view, target, model, method, mark)


render()
