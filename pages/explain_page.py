"""Explain page: pick a finding and methods, see the overlays side by side, download them.

Widget values are stable ids (method ids, scale mode ids); names, costs and estimates are only in labels that never
change and in help text. Slow methods run when asked (a Compute button on their tile), as background jobs of the
engine: while one computes, its tile shows its progress, the time elapsed and left and a Cancel button, redrawn by
a fragment every `state.SLOW_POLL_SECONDS` without blocking the rest of the page; when it ends the whole page is
drawn again and the tile shows the map.

"Compare models" (off by default) shows the same case, finding and method explained by up to three classifiers side
by side, each tile with the model's probability for the finding against its own operating point.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ui import layout, state
from ui.methods import method_description, method_name, methods_help
from xai_core.display import SCALE_MODES, DisplayMap, contour_mask, export_tile, scale_map
from xai_core.engine import Prediction
from xai_core.errors import XaiError
from xai_core.explainers import Explanation, get_explainer, list_explainers
from xai_core.imaging import read_mask_png
from xai_core.overlay import COLOUR_MAPS, blend, maps_npz, outlines, png_bytes, shrink

DISPLAY_SIDE = 512
GRID_COLUMNS = 3
PLOTLY_SCALES = {"jet": "Jet", "inferno": "Inferno", "viridis": "Viridis", "hot": "Hot", "turbo": "Turbo"}
SCALE_LABELS = {"absolute": "absolute", "per map": "per map (stretched)"}


def default_methods(model: str) -> list[str]:
    """The fast methods (NEMt only where a trained module exists)."""
    return [m for m in list_explainers() if get_explainer(m).cost == "fast" and m != "random"
            and state.method_available(model, m)]


def _cost(model: str, method: str) -> str:
    if get_explainer(method).cost == "fast":
        return "fast"
    seconds = state.engine().expected_seconds(model, method)
    return f"slow, computed on request (~{seconds:.0f} s on this machine)" if seconds else \
        "slow, computed on request (can take many seconds on CPU)"


def _figure(image_png: bytes, shape: tuple[int, int], contour: list[np.ndarray], truth: list[np.ndarray],
            display: DisplayMap, colour_map: str) -> go.Figure:
    source = "data:image/png;base64," + base64.b64encode(image_png).decode()
    figure = go.Figure(go.Image(source=source, hoverinfo="skip"))
    for line in contour:
        figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", line={"color": "white", "width": 2},
                                    hoverinfo="skip", showlegend=False))
    for line in truth:
        figure.add_trace(go.Scatter(x=line[:, 0], y=line[:, 1], mode="lines", hoverinfo="skip", showlegend=False,
                                    line={"color": "#00e676", "width": 2, "dash": "dot"}))
    # The colour bar: an invisible marker carrying the map's value range.
    figure.add_trace(go.Scatter(
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
        marker={"colorscale": PLOTLY_SCALES.get(colour_map, "Jet"), "cmin": display.low,
                "cmax": display.high if display.high > display.low else display.low + 1e-9, "color": [display.low],
                "showscale": True, "colorbar": {"title": {"text": "relevance", "side": "right"}, "thickness": 12,
                                                "len": 0.9, "tickformat": ".3g"}}))
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=360,
                         xaxis={"visible": False, "range": [0, shape[1]]},
                         yaxis={"visible": False, "range": [shape[0], 0], "scaleanchor": "x"})
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
        st.slider("Opacity", 0.0, 1.0, step=0.05, key="opacity")
    with c2:
        st.selectbox("Colour map", list(COLOUR_MAPS), key="colour_map")
    with c3:
        st.radio("Colour range", list(SCALE_MODES), key="range_mode", horizontal=True,
                 format_func=SCALE_LABELS.get,
                 help="absolute (default): 0 to 1 for methods whose maps are absolute (NEMt, random), 0 to the "
                      "map's own maximum otherwise, so 0 stays 0 and weak maps look weak. per map: each map from its "
                      "own minimum to maximum (stretches weak maps). Every tile's colour bar gives the values.")
    with c4:
        st.toggle("Top-p% contour", key="contour",
                  help="Outline of the map's top p% pixels; none on an empty map. Pixel-level maps (Integrated "
                       "Gradients, random) are smoothed first.")
        st.slider("p (%)", 1, 50, key="contour_p", disabled=not st.session_state["contour"])
    return {k: st.session_state[k] for k in ("opacity", "colour_map", "range_mode", "contour", "contour_p")}


def _tile_caption(explanation: Explanation, finding: dict, mark: str | None = None) -> list[str]:
    lines = [f"{method_name(explanation.method)} · {explanation.target} p={finding['probability']:.2f} "
             f"(operating point {finding['threshold']:.2f})"]
    if mark:
        lines.append(f"Map and finding {mark}.")
    if not finding["positive"]:
        lines.append("Below the operating point: the model does not report this finding.")
    return lines


@dataclass(frozen=True)
class _Overlay:
    """One map drawn on the case: the blended image, the scaled map, its contour and ground-truth outlines."""

    rgb: np.ndarray
    shape: tuple[int, int]
    display: DisplayMap
    contour: list[np.ndarray]
    truth_lines: list[np.ndarray]


def _overlay(case, pixels: np.ndarray, explanation: Explanation, settings: dict, truth: bool) -> _Overlay:
    """The map on the case's own grid (placed in the crop its model saw), scaled and blended as the settings say."""
    full = explanation.resized_to_image(case.pixels.shape)
    background = shrink(pixels, DISPLAY_SIDE)
    display = scale_map(shrink(full, DISPLAY_SIDE), settings["range_mode"],
                        get_explainer(explanation.method).unit_range)
    rgb = blend(background, display.heat, settings["opacity"], settings["colour_map"])
    contour = outlines(contour_mask(display, settings["contour_p"], explanation.method)) \
        if settings["contour"] else []
    scale = background.shape[0] / case.pixels.shape[0]
    truth_lines = _truth_outlines(explanation.target, case.pixels.shape, scale) if truth else []
    return _Overlay(rgb, background.shape, display, contour, truth_lines)


def _draw(overlay: _Overlay, settings: dict, caption: list[str], chart_key: str, png_key: str,
          file_name: str, note: str | None = None) -> None:
    """The overlay figure (with its colour bar) and its PNG download (with `note`, the out-of-domain banner, on a
    red strip where the guard fired)."""
    display = overlay.display
    if display.empty:
        st.warning(f"This map is empty: {display.reason}. Nothing is outlined.", icon=":material/blur_off:")
    figure = _figure(png_bytes(overlay.rgb), overlay.shape, overlay.contour, overlay.truth_lines, display,
                     settings["colour_map"])
    st.plotly_chart(figure, width="stretch", key=chart_key, config={"displayModeBar": False})
    caption = caption + ([f"This map is empty: {display.reason}."] if display.empty else [])
    exported = png_bytes(export_tile(overlay.rgb, overlay.contour, overlay.truth_lines, display,
                                     settings["colour_map"], caption, note=note))
    st.download_button("Overlay PNG", exported, file_name=file_name, mime="image/png", key=png_key,
                       icon=":material/download:")


def _tile(case, pixels: np.ndarray, explanation: Explanation, settings: dict, truth: bool, finding: dict,
          model: str) -> None:
    method = explanation.method
    st.markdown(f"**{method_name(method)}** · {explanation.seconds * 1000:.0f} ms",
                help=method_description(method))
    mark = state.unreliable(case, model)
    if mark:
        st.caption(f":red[:material/report: **{mark}**]")
    if not finding["positive"]:
        st.caption(f":material/block: {explanation.target} is below its operating point "
                   f"({finding['probability']:.2f} < {finding['threshold']:.2f}): the model does not report it.")
    _draw(_overlay(case, pixels, explanation, settings, truth), settings, _tile_caption(explanation, finding, mark),
          f"overlay-{method}", f"png-{method}", f"{case.sha256[:12]}_{explanation.target}_{method}.png",
          state.domain_note(case, model))


def _slow_heading(method: str, status: str, compare: bool) -> None:
    if compare:
        st.caption(f"{method_name(method)} · {status}")
    else:
        st.markdown(f"**{method_name(method)}** · {status}", help=method_description(method))


def _progress_text(entry: state.SlowJob) -> str:
    elapsed, remaining = state.slow_timing(entry)
    progress = entry.job.progress
    done = f"{progress:.0%} done" if progress is not None else "progress not reported yet"
    if remaining is None:
        left = "time left unknown (its first run here)"
    elif remaining >= 1:
        left = f"about {remaining:.0f} s left"
    else:
        left = "should finish any moment"
    return f"{done} · {elapsed:.0f} s elapsed · {left}"


@st.fragment(run_every=state.SLOW_POLL_SECONDS)
def _computing(key: tuple, cancel_key: str, compare: bool) -> None:
    """A slow map being computed: its progress, times and Cancel, redrawn on its own every poll; once the job has
    ended (or was cancelled) the whole page runs again so the tile shows the map, or why there is none."""
    entry = state.slow_job(key)
    if entry is None or not entry.running:
        st.rerun(scope="app")
    _slow_heading(entry.method, "computing in the background", compare)
    st.progress(entry.job.progress or 0.0, text=_progress_text(entry))
    st.button("Cancel", key=cancel_key, on_click=state.cancel_slow, args=(key,), icon=":material/stop:",
              help="Stop this computation; the rest of the page is not affected.")


def _slow_explanation(case, model: str, method: str, target: str, compute_key: str, cancel_key: str,
                      compare: bool = False) -> Explanation | None:
    """A slow method's map once this session's background job has it; until then the tile's own state: not
    computed yet (a Compute button, and why an earlier try stopped), or computing (progress, times, Cancel)."""
    key = state.slow_key(case, model, target, method)
    explanation = state.settle_slow(key)
    if explanation is not None:
        return explanation
    if state.slow_job(key) is not None:
        _computing(key, cancel_key, compare)
        return None
    _slow_heading(method, "not computed yet", compare)
    note = state.slow_note(key)
    if note is not None:
        kind, text = note
        if kind == "cancelled":
            st.info(f"{method_name(method)}: {text}", icon=":material/cancel:")
        else:
            st.error(f"{method_name(method)} could not be computed: {text}", icon=":material/error:")
    st.button(f"Compute {method_name(method)}", key=compute_key, on_click=state.submit_slow,
              args=(case, model, method, target), icon=":material/play_arrow:",
              help=_cost(model, method) + "; it runs in the background and the page stays usable meanwhile.")
    return None


def _methods_picker(model: str) -> list[str]:
    available = [m for m in list_explainers() if state.method_available(model, m)]
    chosen = st.session_state.get("methods")
    if chosen is None:
        st.session_state["methods"] = default_methods(model)
    elif not set(chosen) <= set(available):
        kept = [m for m in chosen if m in available]
        dropped = [method_name(m) for m in chosen if m not in available]
        st.session_state["methods"] = kept or default_methods(model)
        st.warning(f"{model} cannot run {', '.join(dropped)}: removed from the methods.", icon=":material/info:")
    st.multiselect("Methods", available, key="methods", format_func=method_name,
                   help="Fast methods are on by default; slow ones are computed when you ask (a Compute button on "
                        "their tile).\n\n" + methods_help(available, {m: _cost(model, m) for m in available}))
    return list(st.session_state["methods"])


def _grid(case, pixels: np.ndarray, model: str, target: str, methods: list[str], settings: dict, truth: bool,
          finding: dict) -> None:
    """One tile per chosen method of the current model, and the download of all maps."""
    explanations: dict[str, Explanation] = {}
    st.session_state["explanations"] = {}  # filled as each map arrives: leaving mid-grid keeps the maps made
    columns = st.columns(min(GRID_COLUMNS, len(methods)))
    for i, method in enumerate(methods):
        with columns[i % len(columns)]:
            if get_explainer(method).cost == "slow":
                explanation = _slow_explanation(case, model, method, target, f"compute-{method}",
                                                f"cancel-{method}")
                if explanation is None:
                    continue
            else:
                try:
                    with st.spinner(f"{method_name(method)}…", show_time=True):
                        explanation = state.engine().explain(case, model, method, target)
                except XaiError as exc:
                    st.error(f"{method_name(method)}: {exc}")
                    continue
            explanations[method] = explanation
            st.session_state["explanations"] = dict(explanations)
            _tile(case, pixels, explanation, settings, truth, finding, model)
    if explanations:
        domain = state.domain_quiet(case, model)
        npz = maps_npz({m: e.map for m, e in explanations.items()}, model=model, target=target, sha256=case.sha256,
                       out_of_domain=str(None if domain is None else domain.out_of_domain).lower(),
                       out_of_domain_note=(domain.message if domain is not None else ""))
        st.download_button("All maps (NPZ, model-input resolution)", npz,
                           file_name=f"{case.sha256[:12]}_{target}_maps.npz", mime="application/octet-stream",
                           key="npz", icon=":material/download:")


def _compare_scale_note(method: str, range_mode: str) -> str:
    """What the colours of the comparison's tiles can and cannot be compared on (the rule of `display.scale_map`)."""
    if range_mode == "absolute" and get_explainer(method).unit_range:
        return (f"{method_name(method)} maps are absolute values: every tile uses the same fixed 0-1 colour scale, "
                f"so colours compare strength as well as shape.")
    own = "0 to its own maximum" if range_mode == "absolute" else "its own minimum to its own maximum"
    return (f"Each model's map is normalised to its own range ({own}), so colours compare where each model looked "
            f"(shape), not how strongly: relevance values of different models are not on one scale. Each tile's "
            f"colour bar gives its values.")


def _compare_picker(model: str, target: str) -> tuple[list[str], str]:
    """The models (at most `state.COMPARE_MAX`) and the one method of the comparison."""
    offered, missing = state.compare_choices(model, target)
    chosen = st.session_state.get("compare_models")
    if chosen is None:
        st.session_state["compare_models"] = offered[:2]
    elif len(chosen) > state.COMPARE_MAX:
        st.session_state["compare_models"] = list(chosen[:state.COMPARE_MAX])
        st.warning(f"At most {state.COMPARE_MAX} models are compared: kept "
                   f"{', '.join(chosen[:state.COMPARE_MAX])}.", icon=":material/info:")
    chosen = list(st.session_state["compare_models"])
    # a model chosen earlier that cannot run now stays an option, so its tile can say why (and it can be removed)
    options = offered + [m for m in chosen if m not in offered]
    methods = [m for m in list_explainers() if state.method_available(model, m)]
    current = st.session_state.get("compare_method")
    if current not in methods:
        picked = [m for m in st.session_state.get("methods") or [] if m in methods]
        st.session_state["compare_method"] = picked[0] if picked else methods[0]
    left, right = st.columns([2, 1])
    with left:
        st.multiselect("Models to compare", options, key="compare_models", max_selections=state.COMPARE_MAX,
                       help=f"Classifiers with the finding {target} and trained weights on this server, at most "
                            f"{state.COMPARE_MAX}." + ("\n\nNot offered here:\n" + "\n".join(
                                f"- **{name}**: {why}" for name, why in missing.items()) if missing else ""))
    with right:
        st.selectbox("Method for every model", methods, key="compare_method", format_func=method_name,
                     help="One method for all tiles.\n\n" + methods_help(methods, {}))
    if missing:
        st.caption(f"Not offered (no trained weights on this server, or they cannot be loaded): "
                   f"{', '.join(missing)}. The ? beside *Models to compare* says why and how to get them.")
    if len(offered) < 2:
        who = f"Only {offered[0]} has" if offered else "No model has"
        st.info(f"{who} trained weights for {target} on this server: nothing to compare yet.",
                icon=":material/info:")
    return list(st.session_state["compare_models"]), st.session_state["compare_method"]


def _compare_tile(case, pixels: np.ndarray, name: str, method: str, target: str, settings: dict,
                  truth: bool) -> None:
    """One model's tile: its name, its probability for the finding against its operating point, its map; a model
    that cannot be shown says why here, never as a traceback."""
    st.markdown(f"**{name}**")
    problem = state.compare_problem(name, target)
    if problem:
        st.error(problem, icon=":material/error:")
        return
    if not state.method_available(name, method):
        st.error(f"{name} cannot run {method_name(method)} (e.g. no trained NEMt module): pick another method.",
                 icon=":material/error:")
        return
    slow = get_explainer(method).cost == "slow"
    try:
        with st.spinner(f"{name}: {'predicting' if slow else method_name(method)}…", show_time=True):
            finding = state.finding_summary(state.engine().predict(case, name), target)
            explanation = None if slow else state.engine().explain(case, name, method, target)
    except XaiError as exc:
        st.error(f"{name} could not explain {target}: {exc}", icon=":material/error:")
        return
    except Exception as exc:  # one model's failure must not take the other tiles down
        st.error(f"{name} could not explain {target} ({type(exc).__name__}: {exc}).", icon=":material/error:")
        return
    if explanation is None:  # a slow method: this session's background job (its failures are the tile's note)
        explanation = _slow_explanation(case, name, method, target, f"compare-compute-{name}",
                                        f"compare-cancel-{name}", compare=True)
        if explanation is None:
            return
    verdict = "above" if finding["positive"] else "below"
    st.markdown(f"{target} p = {finding['probability']:.2f} · {verdict} its operating point "
                f"({finding['threshold']:.2f}) · {method_name(method)} {explanation.seconds * 1000:.0f} ms")
    mark = state.unreliable(case, name)
    if mark:
        st.caption(f":red[:material/report: **{mark}** for {name}]")
    if not finding["positive"]:
        st.caption(f":material/block: {name} does not report {target}.")
    caption = [f"{name} · {method_name(method)} · {target} p={finding['probability']:.2f} "
               f"(operating point {finding['threshold']:.2f})"] + ([f"Map and finding {mark}."] if mark else [])
    _draw(_overlay(case, pixels, explanation, settings, truth), settings, caption, f"compare-overlay-{name}",
          f"compare-png-{name}", f"{case.sha256[:12]}_{target}_{method}_{name}.png", state.domain_note(case, name))


def _comparison(case, pixels: np.ndarray, model: str, target: str, settings: dict, truth: bool) -> None:
    """Compare models: the same case, finding and method explained by up to three classifiers side by side."""
    models, method = _compare_picker(model, target)
    if not models:
        st.info(f"Choose the models to compare (at most {state.COMPARE_MAX}).")
        return
    st.caption(f"Same case, finding ({target}), method ({method_name(method)}) and display settings in every tile; "
               f"each map sits on the crop its own model saw. " + _compare_scale_note(method, settings["range_mode"]))
    columns = st.columns(state.COMPARE_MAX)  # tiles keep one width, whatever the number of models
    for column, name in zip(columns, models, strict=False):
        with column:
            _compare_tile(case, pixels, name, method, target, settings, truth)


def render() -> None:
    """The Explain page."""
    prediction: Prediction | None = layout.start("Explain")
    case = state.case_or_message()
    if case is None:
        return
    model = state.current_model()
    if prediction is None:
        prediction = state.prediction_or_message(case, model)
        if prediction is None:
            return
    labels = list(prediction.labels)
    state.ensure_target(prediction)
    left, right = st.columns([1, 2])
    with left:
        st.selectbox("Finding to explain", labels, key="target",
                     help="Defaults to the case's top finding and stays chosen across pages; any label can be "
                          "explained (one below its operating point is marked on every tile).")
    with right:
        methods = _methods_picker(model)
    settings = _controls()
    phantom = st.session_state.get("case_source") == "phantom" and bool(st.session_state.get("case_masks"))
    st.session_state.setdefault("truth", phantom)
    truth = st.toggle("Ground-truth outline (phantom cases)", key="truth", disabled=not phantom) and phantom
    target = st.session_state["target"]
    finding = state.finding_summary(prediction, target)
    pixels = state.display_pixels(case)
    if methods:
        _grid(case, pixels, model, target, methods, settings, truth, finding)
    else:
        st.info("Choose at least one method.")
    if st.toggle("Compare models", key="compare",
                 help=f"The same case, finding and method explained by up to {state.COMPARE_MAX} models side by "
                      f"side, each with its own probability and operating point."):
        _comparison(case, pixels, model, target, settings, truth)


render()
