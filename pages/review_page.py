"""Review page: verdicts on the current case's explanations, the worklist of stored cases, report export."""

from __future__ import annotations

import streamlit as st

from ui import state
from xai_core.imaging import to_png_bytes
from xai_core.overlay import overlay_png, shrink
from xai_core.report import case_report_html
from xai_core.store import VERDICTS


def _save_case_and_results(case, model: str) -> None:
    """Put the current case, its prediction and its explanations into the store."""
    store = state.store()
    thumbnail = to_png_bytes(shrink(case.pixels, 256))
    label = st.session_state.get("case_title") or case.source_name or "case"
    store.add_case(case.sha256, label, source=st.session_state.get("case_source") or "upload",
                   shape=case.pixels.shape, thumbnail=thumbnail)
    prediction = st.session_state.get("prediction")
    if prediction is not None and prediction.sha256 == case.sha256:
        store.save_result(case.sha256, model, "prediction",
                          {"findings": prediction.ranked(), "demo": state.is_demo_model(model)})
    _, crop = state.engine().prepare(case, model)
    for method, explanation in (st.session_state.get("explanations") or {}).items():
        full = explanation.resized_to_image(case.pixels.shape, crop)
        store.save_result(case.sha256, model, "explanation", {"seconds": explanation.seconds,
                                                               "params": explanation.params},
                          target=explanation.target, method=method,
                          overlay=overlay_png(shrink(case.pixels, 512), shrink(full, 512)))


def _record(case, model: str, target: str, method: str) -> None:
    verdict = st.session_state.get(f"verdict-{method}")
    if verdict is None:
        return
    _save_case_and_results(case, model)
    state.store().add_verdict(case.sha256, model, target, method, verdict,
                              st.session_state.get(f"comment-{method}", ""), st.session_state.get("reviewer", ""))
    st.session_state["saved_message"] = f"Saved: {method} · {target} · {verdict}"


def _current_case_panel() -> None:
    case = state.current_case()
    explanations = st.session_state.get("explanations") or {}
    if case is None or not explanations:
        st.info("Load a case and open the Explain page: its explanations can then be reviewed here.")
        return
    model = state.current_model()
    store = state.store()
    latest = store.latest_verdicts(case.sha256)
    st.text_input("Reviewer (optional, kept with the verdict)", key="reviewer")
    for method, explanation in explanations.items():
        target = explanation.target
        with st.form(f"form-{method}", clear_on_submit=False, border=True):
            st.markdown(f"**{method}** explaining **{target}**")
            previous = latest.get((model, target, method))
            if previous:
                st.caption(f"Latest verdict: {previous.verdict} ({previous.created} UTC)"
                           + (f" · {previous.comment}" if previous.comment else ""))
            st.radio("Does this explanation look right?", VERDICTS, key=f"verdict-{method}", horizontal=True,
                     index=VERDICTS.index(previous.verdict) if previous else None)
            st.text_area("Comment", key=f"comment-{method}", height=68)
            st.form_submit_button("Save verdict", on_click=_record, args=(case, model, target, method))
    if "saved_message" in st.session_state:
        st.success(st.session_state.pop("saved_message"), icon=":material/check:")


def _worklist() -> None:
    store = state.store()
    cases = store.cases()
    st.caption(f"Store: {store.path}")
    if not cases:
        st.info("No stored cases yet: saving a verdict stores its case, predictions and overlays.")
        return
    st.dataframe([{k: c[k] for k in ("label", "source", "results", "verdicts", "last_verdict", "created")}
                  | {"case": c["sha256"][:12]} for c in cases], hide_index=True, width="stretch")
    titles = {f"{c['label']} · {c['sha256'][:12]}": c["sha256"] for c in cases}
    choice = st.selectbox("Case", list(titles), key="review_case")
    sha = titles[choice]
    verdicts = store.verdicts(sha)
    if verdicts:
        st.table([{"time (UTC)": v.created, "model": v.model, "finding": v.target, "method": v.method,
                   "verdict": v.verdict, "comment": v.comment, "reviewer": v.reviewer} for v in verdicts])
    st.download_button("Export case report (HTML)", case_report_html(store, sha), file_name=f"case_{sha[:12]}.html",
                       mime="text/html", key="report", icon=":material/download:")


def render() -> None:
    """The Review page."""
    st.title("Review")
    current, worklist = st.tabs(["Current case", "Worklist"])
    with current:
        _current_case_panel()
    with worklist:
        _worklist()


render()
