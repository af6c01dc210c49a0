"""Case page: load a radiograph (upload or sample), window it, read its metadata and the model's findings."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ui import layout, state
from xai_core.display import window_presets
from xai_core.engine import Prediction
from xai_core.errors import XaiError
from xai_core.imaging import (
    DEFAULT_MAX_BYTES,
    Radiograph,
    RadiographError,
    load_radiograph,
    rewindow,
    to_png_bytes,
)
from xai_core.samples import all_samples
from xai_core.store import MAX_LABEL, clean_label

NO_SAMPLE = "— choose a sample —"


def _load_upload() -> None:
    uploaded = st.session_state.get("upload")
    if uploaded is None:
        return
    try:
        radiograph = load_radiograph(uploaded.getvalue(), name=uploaded.name)
    except RadiographError as exc:
        st.session_state["load_error"] = f"{uploaded.name} was not loaded: {exc}"
        return
    st.session_state.pop("load_error", None)
    st.session_state["case_title"] = uploaded.name
    state.set_case(radiograph, "upload")
    st.session_state["sample"] = NO_SAMPLE  # the picker no longer names the shown case


def _load_sample() -> None:
    choice = st.session_state.get("sample")
    samples = {s.title: s for s in all_samples()}
    if choice not in samples:
        return
    try:
        radiograph = load_radiograph(samples[choice].path)
    except RadiographError as exc:
        st.session_state["load_error"] = str(exc)
        return
    st.session_state.pop("load_error", None)
    sample = samples[choice]
    st.session_state["case_title"] = sample.title
    state.set_case(radiograph, "sample", labels=sample.labels, source=sample.source, masks=sample.masks)


def _loaders() -> None:
    left, right = st.columns(2)
    with left:
        st.file_uploader(
            f"Upload a radiograph (PNG, JPEG, TIFF or DICOM; up to {DEFAULT_MAX_BYTES // 2**20} MB)",
            key="upload", on_change=_load_upload,
            help="Any file name is accepted (DICOM files often have no extension); the content is checked.",
        )
    with right:
        st.selectbox("…or pick a sample case", [NO_SAMPLE, *(s.title for s in all_samples())], key="sample",
                     on_change=_load_sample)
    if "load_error" in st.session_state:
        st.error(st.session_state["load_error"], icon=":material/error:")
        if state.current_case() is not None:
            st.caption("The case shown below is still the previous one.")
    uploaded = st.session_state.get("upload")
    if state.current_case() is not None and st.session_state.get("case_origin") == "sample" and uploaded is not None:
        st.caption(f"Showing the sample {st.session_state.get('case_title')}: the uploaded file above is not the "
                   "current case (upload it again to show it).")


def _set_window(sha: str, centre: float, width: float) -> None:
    st.session_state[f"wc-{sha}"], st.session_state[f"ww-{sha}"] = centre, width


def _apply_preset(sha: str, presets: dict[str, tuple[float, float]], canonical: tuple[float, float]) -> None:
    choice = st.session_state.get(f"wl-preset-{sha}")
    _set_window(sha, *(presets.get(choice, canonical)))


def _reset_window(sha: str, canonical: tuple[float, float]) -> None:
    _set_window(sha, *canonical)
    st.session_state[f"wl-preset-{sha}"] = None


def _window_controls(case: Radiograph) -> tuple[float, float] | None:
    """Window centre/width for display (DICOM); None when the file's own window is shown."""
    window = case.meta.get("window")
    if window is None or case.meta.get("format") != "DICOM":
        return None
    sha = case.sha256
    lo, hi = float(case.raw.min()), float(case.raw.max())
    span = max(hi - lo, 1.0)
    canonical = (min(max(float(window[0]), lo), hi), float(min(max(window[1], 1.0), 2 * span)))
    presets = {name: (min(max(c, lo), hi), min(w, 2 * span))
               for name, (c, w) in window_presets(case.raw, case.meta.get("photometric")).items()}
    st.session_state.setdefault(f"wc-{sha}", canonical[0])
    st.session_state.setdefault(f"ww-{sha}", canonical[1])
    left, right = st.columns([3, 1])
    with left:
        st.segmented_control("Window preset", list(presets), key=f"wl-preset-{sha}", format_func=str.title,
                             on_change=_apply_preset, args=(sha, presets, canonical),
                             help="For display only: the model always receives the file's own window.")
    with right:
        st.button("Reset window", key=f"wl-reset-{sha}", on_click=_reset_window, args=(sha, canonical),
                  icon=":material/restart_alt:", help="Back to the window stored in the file.")
    centre = st.slider("Window centre", lo, hi, key=f"wc-{sha}")
    width = st.slider("Window width", 1.0, 2 * span, key=f"ww-{sha}")
    windows = dict(st.session_state.get("display_windows") or {})
    if (centre, width) == canonical:
        windows.pop(sha, None)
        chosen = None
    else:
        windows[sha] = (centre, width)
        chosen = (centre, width)
    st.session_state["display_windows"] = windows
    return chosen


def _image_panel(case: Radiograph) -> None:
    """Shows the image with display-only window controls (DICOM)."""
    chosen = _window_controls(case)
    pixels = case.pixels
    if chosen is not None:
        try:
            pixels = rewindow(case, *chosen).pixels
        except XaiError as exc:
            st.error(f"That window cannot be shown: {exc}")
        st.caption("Display window changed: the findings still use the file's own window.")
    st.image(to_png_bytes(pixels), caption=case.source_name, width="stretch")
    with st.expander("Image metadata (de-identified)"):  # a dataframe: values from the file are not Markdown
        st.dataframe({"field": list(case.meta), "value": [str(v) for v in case.meta.values()]},
                     hide_index=True, width="stretch")


def _sharing_panel(case: Radiograph) -> None:
    """The name other reviewers and reports see, and (uploads) the optional label that goes with it."""
    if st.session_state.get("case_origin") == "upload":
        key = f"case_label-{case.sha256[:12]}"
        saved = (st.session_state.get("shared_labels") or {}).get(case.sha256, "")
        st.text_input("Label for other reviewers (optional)", value=saved, key=key, max_chars=MAX_LABEL,
                      on_change=state.remember_case_label, args=(case.sha256,),
                      help="Shown with the case's content hash in the worklist and reports. No patient names, IDs "
                           "or dates: a label repeating the file name is not used.")
        typed = clean_label(st.session_state.get(key))
        if typed and typed not in state.shared_case_name(case):
            st.warning("That label repeats part of the file name (file names often carry the patient's name or ID), "
                       "so it is not used.", icon=":material/visibility_off:")
        st.caption("The file name stays in this browser session: it is never stored, reported or shown to others.")
    st.text(f"Shared as: {state.shared_case_name(case)}")


def _findings_chart(prediction: Prediction, mark: str | None = None) -> go.Figure:
    rows = prediction.ranked()[::-1]
    figure = go.Figure(go.Bar(
        x=[r["probability"] for r in rows], y=[r["label"] for r in rows], orientation="h",
        marker_color=["#d62728" if r["positive"] else "#7f7f7f" for r in rows], name="probability",
    ))
    figure.add_trace(go.Scatter(
        x=[r["threshold"] for r in rows], y=[r["label"] for r in rows], mode="markers",
        marker={"symbol": "line-ns-open", "size": 16, "color": "black"}, name="operating point",
    ))
    top = (40 if mark else 10) + 26  # room for the legend above the bars (below them it covers the axis)
    figure.update_layout(xaxis={"range": [0, 1], "title": "probability"}, height=50 + top + 26 * len(rows),
                         margin={"l": 10, "r": 10, "t": top, "b": 10},
                         legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
                         title={"text": f"Findings ({mark})", "font": {"color": "#b00020"}} if mark else None)
    return figure


def _findings_panel(case: Radiograph, model: str) -> None:
    prediction = state.prediction_or_message(case, model)  # the file's own window, whatever the display shows
    if prediction is None:
        return
    st.session_state["prediction"] = prediction
    domain = state.domain_quiet(case, model)
    mark = state.unreliable(case, model)
    if mark:  # the header's banner says why
        st.warning(f"Findings {mark}: shown for inspection only.", icon=":material/report:")
    elif state.is_demo_model(model) and (domain is None or domain.out_of_domain is None):  # the guard did not look
        origin, source = st.session_state.get("case_origin"), st.session_state.get("case_source")
        if origin == "sample" and source != "phantom":
            st.warning("This real radiograph is outside the demo model's training data (synthetic phantoms): its "
                       "findings carry no meaning.", icon=":material/warning:")
        elif origin == "upload":
            st.caption("If this is a real radiograph, it is outside the demo model's training data and its findings "
                       "carry no meaning.")
    st.plotly_chart(_findings_chart(prediction, mark), width="stretch")
    positives = [r["label"] for r in prediction.ranked() if r["positive"]]
    st.metric("Findings above their operating point" + (f" ({mark})" if mark else ""),
              ", ".join(positives) if positives else "none")
    if st.session_state.get("case_origin") == "sample" and st.session_state.get("case_labels") is not None:
        known = st.session_state["case_labels"]
        st.caption(f"Ground truth for this sample: {', '.join(known) if known else 'No Finding'}")


def render() -> None:
    """The Case page."""
    layout.start("Case")
    _loaders()
    case = state.current_case()
    if case is None:
        st.info("Load a radiograph to begin: upload a file or pick a sample case.")
        return
    image_col, findings_col = st.columns(2)
    with image_col:
        _image_panel(case)
        _sharing_panel(case)
    with findings_col:
        _findings_panel(case, state.current_model())


render()
