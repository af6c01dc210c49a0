"""Review page: verdicts on the current case's explanations, the worklist of stored cases, report export.

Verdicts carry the signed-in identity (ui/access.py). Cases are stored under their shared name (`case-<hash>` and
the reviewer's label), never the uploaded file's name. Comments are shown as plain text, never Markdown or HTML.
"""

from __future__ import annotations

import streamlit as st

from ui import access, layout, state
from ui.methods import method_description, method_name
from xai_core.display import scale_map
from xai_core.errors import InputError, StoreError
from xai_core.explainers import get_explainer
from xai_core.imaging import to_png_bytes
from xai_core.overlay import blend, overlay_png, png_bytes, shrink
from xai_core.report import case_report_html
from xai_core.store import MAX_COMMENT, VERDICTS, CaseStore

TILE_SIDE = 320


def _save_case_and_results(store: CaseStore, case, model: str) -> None:
    """Put the current case, its prediction and its explanations into the store."""
    thumbnail = to_png_bytes(shrink(case.pixels, 256))
    store.add_case(case.sha256, state.shared_case_name(case), source=st.session_state.get("case_source") or "upload",
                   shape=case.pixels.shape, thumbnail=thumbnail)
    prediction = st.session_state.get("prediction")
    domain = state.domain_quiet(case, model)
    guard = domain.to_json() if domain is not None else {}
    if prediction is not None and prediction.sha256 == case.sha256:
        store.save_result(case.sha256, model, "prediction",
                          {"findings": prediction.ranked(), "demo": state.is_demo_model(model), **guard})
    note = state.domain_note(case, model)
    for method, explanation in (st.session_state.get("explanations") or {}).items():
        full = explanation.resized_to_image(case.pixels.shape)
        store.save_result(case.sha256, model, "explanation", {"seconds": explanation.seconds,
                                                               "params": explanation.params,
                                                               "out_of_domain": guard.get("out_of_domain")},
                          target=explanation.target, method=method,
                          overlay=overlay_png(shrink(case.pixels, 512), shrink(full, 512), note=note))


def _record(case, model: str, target: str, method: str) -> None:
    verdict = st.session_state.get(f"verdict-{method}")
    user = access.session_user()
    if verdict is None or user is None:
        return
    try:
        store = state.store()
        _save_case_and_results(store, case, model)
        store.add_verdict(case.sha256, model, target, method, verdict, st.session_state.get(f"comment-{method}", ""),
                          user.username, role=user.role, auth=user.source)
    except StoreError as exc:
        st.session_state["store_problem"] = f"Not saved. {state.store_message(exc)}"
        return
    except InputError as exc:
        st.session_state["store_problem"] = f"Not saved: {exc}"
        return
    st.session_state["saved_message"] = (method, f"Saved: {method_name(method)} · {target} · {verdict} "
                                                 f"(as {user.username})")


def _pictures(case, explanation) -> tuple[bytes, bytes]:
    """The original and the overlay (absolute scale, as on the Explain page), both small."""
    pixels = shrink(state.display_pixels(case), TILE_SIDE)
    full = shrink(explanation.resized_to_image(case.pixels.shape), TILE_SIDE)
    display = scale_map(full, "absolute", get_explainer(explanation.method).unit_range)
    return to_png_bytes(pixels), png_bytes(blend(pixels, display.heat, 0.5))


def _current_case_panel(store: CaseStore) -> None:
    case = state.current_case()
    explanations = st.session_state.get("explanations") or {}
    if case is None or not explanations:
        st.info("Load a case and open the Explain page: its explanations can then be reviewed here.")
        return
    model = state.current_model()
    prediction = state.prediction_quiet(case, model)
    user = access.session_user()
    mark = state.unreliable(case, model)
    latest = store.latest_verdicts(case.sha256)
    st.caption(f"Verdicts are recorded as {user.username} ({user.role}).")
    st.text(f"Case: {state.shared_case_name(case)}")
    saved = st.session_state.pop("saved_message", None)
    if saved:
        st.toast(saved[1], icon=":material/check:")
    for method, explanation in explanations.items():
        target = explanation.target
        with st.form(f"form-{method}", clear_on_submit=False, border=True):
            st.markdown(f"**{method_name(method)}** explaining **{target}**", help=method_description(method))
            if mark:
                st.caption(f":red[:material/report: **{mark}**]")
            if prediction is not None and target in prediction.labels:
                finding = state.finding_summary(prediction, target)
                reported = "reported" if finding["positive"] else "below its operating point: not reported"
                st.caption(f"{target}: probability {finding['probability']:.2f} (operating point "
                           f"{finding['threshold']:.2f}, {reported})")
            original, overlay = _pictures(case, explanation)
            left, right = st.columns(2)
            with left:
                st.image(original, caption="original", width="stretch")
            with right:
                st.image(overlay, caption=f"{method_name(method)} overlay", width="stretch")
            previous = latest.get((model, target, method))
            if previous:
                st.caption(f"Latest verdict: {previous.verdict} ({layout.local_time(previous.created)})")
                if previous.reviewer or previous.comment:  # plain text: a comment is never Markdown or HTML
                    st.text(f"{previous.reviewer or 'unknown reviewer'}: {previous.comment}")
            st.radio("Does this explanation look right?", VERDICTS, key=f"verdict-{method}", horizontal=True,
                     index=VERDICTS.index(previous.verdict) if previous else None)
            st.text_area("Comment", key=f"comment-{method}", height=68, max_chars=MAX_COMMENT)
            st.form_submit_button("Save verdict", on_click=_record, args=(case, model, target, method))
        if saved and saved[0] == method:
            st.success(saved[1], icon=":material/check:")
    if "store_problem" in st.session_state:
        st.error(st.session_state.pop("store_problem"), icon=":material/database:")


def _worklist(store: CaseStore) -> None:
    cases = store.cases()
    if not cases:
        st.info("No stored cases yet: saving a verdict stores its case, predictions and overlays.")
        return
    st.dataframe([{"label": c["label"], "source": c["source"], "results": c["results"], "verdicts": c["verdicts"],
                   "last verdict": layout.local_time(c["last_verdict"]), "stored": layout.local_time(c["created"]),
                   "case": c["sha256"][:12]} for c in cases], hide_index=True, width="stretch")
    titles = {f"{c['label']} · {c['sha256'][:12]}": c for c in cases}
    choice = st.selectbox("Case", list(titles), key="review_case")
    chosen = titles[choice]
    sha = chosen["sha256"]
    if st.button("Open in Explain", key="review_open", icon=":material/open_in_new:",
                 help="Makes this case current and opens it on the Explain page (samples, and uploads of this "
                      "session; other uploads must be uploaded again: only their hash is stored)."):
        if state.reopen_case(sha, chosen["label"]):
            st.switch_page("pages/explain_page.py")
        st.warning("This case's image is not on this server (uploads are not stored): upload the file again on the "
                   "Case page.", icon=":material/upload_file:")
    verdicts = store.verdicts(sha)
    if verdicts:  # a dataframe, not st.table: table cells render Markdown (an image link would be fetched)
        st.dataframe([{"time": layout.local_time(v.created), "model": v.model, "finding": v.target,
                       "method": method_name(v.method), "verdict": v.verdict, "comment": v.comment,
                       "reviewer": v.reviewer, "role": v.role} for v in verdicts], hide_index=True, width="stretch")
    st.download_button("Export case report (HTML)", case_report_html(store, sha), file_name=f"case_{sha[:12]}.html",
                       mime="text/html", key="report", icon=":material/download:")


def render() -> None:
    """The Review page."""
    access.require("review")
    layout.start("Review")
    store = state.store_or_message()
    if store is None:
        return
    current, worklist = st.tabs(["Current case", "Worklist"])
    try:
        with current:
            _current_case_panel(store)
        with worklist:
            _worklist(store)
    except StoreError as exc:
        st.error(state.store_message(exc), icon=":material/database:")


render()
