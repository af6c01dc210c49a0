"""Per-session state and the process-wide engine, as the pages see them."""

from __future__ import annotations

import os

import streamlit as st

from ui.access import session_user
from xai_core.engine import Engine, Prediction, get_engine
from xai_core.errors import StoreError, XaiError
from xai_core.explainers import get_explainer
from xai_core.imaging import Radiograph
from xai_core.mammi import AnnotationStore, bundled_annotation
from xai_core.models import get_card, list_models
from xai_core.store import CaseStore, case_name, default_path, identifying_parts

PREFERRED_MODEL = "demo"
DEPENDENT_KEYS = ("prediction", "target", "explanations")


@st.cache_resource(show_spinner=False)
def engine() -> Engine:
    """The shared inference core (one per server process)."""
    return get_engine(allow_random_weights=os.environ.get("XAI_ALLOW_RANDOM_WEIGHTS") == "1")


@st.cache_resource(show_spinner=False)
def _store(path: str) -> CaseStore:
    return CaseStore(path)


def store() -> CaseStore:
    """The case store (SQLite file from $XAI_STORE_PATH / $XAI_DATA_DIR, default data/cases.sqlite); raises
    `StoreError` when it cannot be used (not cached: the next call tries again, e.g. after space was freed)."""
    return _store(str(default_path()))


def store_message(exc: StoreError) -> str:
    """A store failure as the page shows it: the store's server path only to administrators."""
    text = str(exc)
    user = session_user()
    if user is None or not user.can("admin"):
        text = text.replace(str(default_path()), "(the store file; its path is shown to administrators)")
    return text


def store_or_message() -> CaseStore | None:
    """The case store, or None after showing why it cannot be used and what to do."""
    try:
        return store()
    except StoreError as exc:
        st.error(store_message(exc), icon=":material/database:")
        return None


def available_models() -> list[str]:
    names = list_models()
    return sorted(names, key=lambda n: (n != PREFERRED_MODEL, n))


def current_model() -> str:
    """The model chosen in the sidebar (the preferred model until one is chosen)."""
    return st.session_state.get("model") or available_models()[0]


def reset_dependent_state() -> None:
    """Forget what was computed for the previous case or model."""
    for key in DEPENDENT_KEYS:
        st.session_state.pop(key, None)


def current_case() -> Radiograph | None:
    return st.session_state.get("case")


def set_case(radiograph: Radiograph, origin: str, *, labels: list[str] | None = None,
             source: str | None = None, masks: dict | None = None) -> None:
    """Make a radiograph the current case (resets predictions and explanations if it changed).

    `origin` is 'upload' or 'sample'; samples carry their known `labels`, `source` ('phantom', ...) and the
    paths of their ground-truth lesion `masks` by finding.
    """
    previous = current_case()
    if previous is None or previous.sha256 != radiograph.sha256 or previous.meta != radiograph.meta:
        reset_dependent_state()
    st.session_state["case"] = radiograph
    if previous is None or previous.sha256 != radiograph.sha256:
        st.session_state.update(case_origin=origin, case_labels=labels, case_source=source, case_masks=masks or {})


def remember_case_label(sha256: str) -> None:
    """Keep the label typed for a case beyond its widget (widget state is dropped on other pages)."""
    labels = dict(st.session_state.get("shared_labels") or {})
    labels[sha256] = st.session_state.get(f"case_label-{sha256[:12]}", "")
    st.session_state["shared_labels"] = labels


def shared_case_name(case: Radiograph) -> str:
    """The name the current case is stored and reported under, and shown to other sessions: `case-<hash>` plus the
    reviewer's label (uploads; a label containing the file name is dropped) or the sample's title (samples)."""
    if st.session_state.get("case_origin") == "sample":
        return case_name(case.sha256, st.session_state.get("case_title"))
    label = (st.session_state.get("shared_labels") or {}).get(case.sha256)
    return case_name(case.sha256, label, forbidden=identifying_parts(case.source_name))


def model_problem(name: str) -> str | None:
    """Why a model cannot be used here (e.g. missing weights), or None."""
    try:
        engine().model(name)
    except XaiError as exc:
        return str(exc)
    return None


def is_demo_model(name: str) -> bool:
    """Models trained on the synthetic phantom world (bundled)."""
    return "phantom" in str(get_card(name).provenance.get("source", ""))


def card_summary(name: str) -> dict:
    card = get_card(name)
    return {"labels": len(card.labels), "input": f"{card.input.channels} x {card.input.size}", **card.provenance}


def prediction_or_message(case: Radiograph, model: str) -> Prediction | None:
    """The model's prediction for the case, or None after showing why there is none (missing weights, a model that
    cannot run on this image)."""
    problem = model_problem(model)
    if problem:
        st.error(problem, icon=":material/error:")
        return None
    try:
        return engine().predict(case, model)
    except XaiError as exc:
        st.error(f"The model could not run on this image: {exc}")
        return None


def case_or_message() -> Radiograph | None:
    """The current case, or None after telling the user how to load one."""
    case = current_case()
    if case is None:
        st.info("No case loaded yet: pick a sample or upload a radiograph on the Case page.")
    return case


def method_available(model: str, method: str) -> bool:
    """Whether an explanation method can run for this model (NEMt needs a trained module)."""
    try:
        return get_explainer(method).available(engine().model(model))
    except XaiError:
        return False


@st.cache_resource(show_spinner=False)
def _annotation(path: str, mtime: float) -> AnnotationStore:
    return AnnotationStore(path)


def annotation_store(model: str, layer: str):
    """The precomputed MAMMI annotation of a model's layer (demo-clip, demo concept set), or None."""
    path = bundled_annotation(model, layer)
    return None if path is None else _annotation(str(path), path.stat().st_mtime)
