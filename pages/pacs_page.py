"""PACS page: a worklist of CR/DX studies from the PACS (DICOMweb), opened into Case/Explain; results sent back.

The worklist is de-identified: a short hash of the study's UID, its modalities, the study date and counts, never a
name, ID or accession number. It lives in this browser session only (never a cache shared between sessions); an
opened study becomes the session's case like an upload (named `pacs-<hash>.dcm`), so the store and reports see only
its content hash. The PACS address and sign-in come from XAI_PACS_URL / XAI_PACS_USER / XAI_PACS_PASSWORD.
"""

from __future__ import annotations

import streamlit as st

from ui import state
from xai_core.dicomweb import PacsClient, PacsSettings
from xai_core.dicomweb.results import ResultInfo, results_for
from xai_core.errors import InputError, PacsError

STUDIES = "pacs_studies"
SOURCE = "pacs_source"  # (case sha256, source DICOM bytes) of the case opened from the PACS, this session only
MESSAGE = "pacs_message"


def _client() -> PacsClient | None:
    settings = PacsSettings.from_env()
    if settings is None:
        return None
    return PacsClient(settings.url, user=settings.user, password=settings.password)


def _refresh() -> None:
    client = _client()
    if client is None:
        return
    try:
        st.session_state[STUDIES] = client.search_studies()
        st.session_state.pop(MESSAGE, None)
    except PacsError as exc:
        st.session_state[MESSAGE] = ("error", str(exc))


def _open() -> None:
    studies = {s.key: s for s in st.session_state.get(STUDIES) or []}
    study = studies.get(st.session_state.get("pacs_study"))
    client = _client()
    if study is None or client is None:
        return
    try:
        retrieved = client.open_study(study.uid)
    except PacsError as exc:
        st.session_state[MESSAGE] = ("error", str(exc))
        return
    state.set_case(retrieved.radiograph, "upload", source="pacs")
    st.session_state["case_title"] = retrieved.radiograph.source_name
    st.session_state[SOURCE] = (retrieved.radiograph.sha256, retrieved.source)
    st.session_state[MESSAGE] = ("success", f"Study {study.key} is the current case: see the Case and Explain pages.")


def _send_results(method: str) -> None:
    case = state.current_case()
    source = st.session_state.get(SOURCE)
    explanation = (st.session_state.get("explanations") or {}).get(method)
    client = _client()
    if case is None or source is None or source[0] != case.sha256 or explanation is None or client is None:
        return
    domain = state.domain_quiet(case, str(explanation.model))
    info = ResultInfo(method=method, target=str(explanation.target), model=str(explanation.model),
                      out_of_domain=domain.message if domain is not None and domain.out_of_domain else "")
    try:
        objects = results_for(source[1], explanation.resized_to_image(case.shape), info)
        stored = client.store(objects)
    except (PacsError, InputError) as exc:
        st.session_state[MESSAGE] = ("error", f"The results were not sent: {exc}")
        return
    st.session_state[MESSAGE] = ("success", f"{stored} result object(s) sent to the PACS, each in a new series of "
                                            "the study (overlay marked NOT FOR DIAGNOSTIC USE, region segmentation).")


st.title("PACS worklist")
client = _client()
if client is None:
    st.info("No PACS is configured. Set XAI_PACS_URL to its DICOMweb root (and XAI_PACS_USER / XAI_PACS_PASSWORD if "
            "it needs a sign-in); `make pacs` starts a local one with the sample studies.", icon=":material/dns:")
    st.stop()

st.caption(f"PACS: {client.shown_url}. Studies are shown by a short hash only: no names, IDs or accession numbers.")
if STUDIES not in st.session_state and MESSAGE not in st.session_state:
    _refresh()
st.button("Refresh worklist", on_click=_refresh, icon=":material/refresh:")

kind, text = st.session_state.get(MESSAGE, (None, None))
if kind == "error":
    st.error(text, icon=":material/error:")
elif kind == "success":
    st.success(text, icon=":material/check_circle:")

studies = st.session_state.get(STUDIES) or []
if not studies:
    st.info("The PACS holds no CR or DX study (or the worklist could not be read).")
else:
    st.dataframe([s.row() for s in studies], hide_index=True, width="stretch")
    labels = {s.key: f"{s.key} · {', '.join(s.modalities)}" + (f" · {s.row()['date']}" if s.date else "")
              for s in studies}
    st.selectbox("Study", list(labels), format_func=labels.get, key="pacs_study")
    st.button("Open study", on_click=_open, type="primary", icon=":material/radiology:")

case = state.current_case()
source = st.session_state.get(SOURCE)
explanations = st.session_state.get("explanations") or {}
if case is not None and source is not None and source[0] == case.sha256:
    st.subheader("Send results to the PACS")
    if not explanations:
        st.caption("Compute an explanation on the Explain page first; it can then be sent back as DICOM.")
    else:
        method = st.selectbox("Explanation", sorted(explanations), key="pacs_method")
        note = state.domain_note(case, str(explanations[method].model))
        if note:  # the DICOM objects say NOT FOR DIAGNOSTIC USE; the reviewer must know more before sending them
            st.warning(note, icon=":material/report:")
        st.button("Send to PACS", on_click=_send_results, args=(method,), icon=":material/upload:")
