"""Per-session state and the process-wide engine, as the pages see them."""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, replace

import streamlit as st

from ui.access import session_user
from xai_core.engine import Engine, Prediction, get_engine
from xai_core.errors import StoreError, XaiError
from xai_core.explainers import Explanation, get_explainer
from xai_core.imaging import Radiograph, load_radiograph, rewindow
from xai_core.jobs import Cancelled, Job
from xai_core.mammi import AnnotationStore, bundled_annotation
from xai_core.models import get_card, list_models
from xai_core.models.ood import UNRELIABLE, DomainCheck
from xai_core.samples import all_samples
from xai_core.store import CaseStore, case_name, default_path, identifying_parts

PREFERRED_MODEL = "demo"
DEPENDENT_KEYS = ("prediction", "target", "explanations", "truth")
# The per-case context: widget values kept across pages and reruns (Streamlit drops a widget's value on a run that
# does not draw it; `keep_context` re-asserts them at the top of every page). Widgets with these keys take their
# defaults from `CONTEXT_DEFAULTS`, never from a `value=` argument.
CONTEXT_DEFAULTS = {
    "opacity": 0.5, "colour_map": "jet", "range_mode": "absolute", "contour": True, "contour_p": 10,
    "segx_mode": "soft", "segx_p": 5, "concept_layer": None, "concept_query": "", "concept_order": None,
    "concept_neuron": None,
    "eval_data": None, "eval_n": 20, "eval_methods": None, "eval_groups": None, "compare": False,
}
CONTEXT_KEYS = ("model", "target", "methods", "truth", "refine_method", "segmenter", "sample", "compare_models",
                "compare_method", *CONTEXT_DEFAULTS)
SLOW_JOBS = "slow_jobs"  # (sha256, model, target, method) -> SlowJob: the slow maps this session asked for
SLOW_NOTES = "slow_notes"  # the same keys -> (kind, text): why a slow map is not there ("cancelled", "error")
SLOW_SESSION = "slow_session"  # this session's token among the followers of a shared engine job
SLOW_POLL_SECONDS = 0.5  # how often a computing tile and the header's busy line look at their jobs
MAX_SLOW_DONE = 24  # finished slow maps a session keeps (older ones go back to "not computed yet")
MAX_SESSION_CASES = 8  # radiographs kept in the session so the worklist can reopen them
COMPARE_MAX = 3  # models side by side in the Explain page's model comparison


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


def keep_context() -> None:
    """Keeps the per-case context across pages and reruns: fills in defaults and re-asserts every context value
    (a widget not drawn on a page would otherwise lose its value)."""
    for key, value in CONTEXT_DEFAULTS.items():
        if value is not None and key not in st.session_state:
            st.session_state[key] = value
    for key in CONTEXT_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def reset_dependent_state() -> None:
    """Forget what was computed for the previous case or model (the finding is kept while the model has it)."""
    target = st.session_state.get("target")
    for key in DEPENDENT_KEYS:
        st.session_state.pop(key, None)
    if target is not None:
        st.session_state["kept_target"] = target


def on_model_change() -> None:
    """The model changed: predictions and maps go; the finding is kept where the new model has it."""
    reset_dependent_state()
    st.session_state.pop("notice", None)


def ensure_target(prediction: Prediction) -> str:
    """The finding of the context: kept while the model has it, the top finding for a new case, and never switched
    without a notice (shown in the page header)."""
    labels = list(prediction.labels)
    target = st.session_state.get("target") or st.session_state.pop("kept_target", None)
    if target in labels:
        st.session_state["target"] = target
        return target
    top = prediction.ranked()[0]["label"]
    if target is not None:
        st.session_state["notice"] = (f"{prediction.model} has no finding '{target}': the finding is now {top}, "
                                      f"its top finding.")
    st.session_state["target"] = top
    return top


def finding_summary(prediction: Prediction, target: str) -> dict:
    """The chosen finding's probability, operating point and whether the model reports it."""
    return prediction.finding(list(prediction.labels).index(target))


def _quiet(case: Radiograph, model: str, ask):
    """`ask(case, model)` of the engine, or None where the model cannot run or refuses (the page says why)."""
    if model_problem(model):
        return None
    try:
        return ask(case, model)
    except XaiError:
        return None


def prediction_quiet(case: Radiograph, model: str) -> Prediction | None:
    """The prediction for the header, or None when there is none (the page itself says why)."""
    return _quiet(case, model, engine().predict)


def domain_quiet(case: Radiograph, model: str) -> DomainCheck | None:
    """The out-of-domain guard's answer for the case and model, or None where the model cannot run (the page says
    why)."""
    return _quiet(case, model, engine().domain)


def unreliable(case: Radiograph, model: str) -> str | None:
    """The short mark for findings, maps and certainty of a case the guard flags for this model ('unreliable: out
    of domain'), else None."""
    domain = domain_quiet(case, model)
    return UNRELIABLE if domain is not None and domain.out_of_domain else None


def domain_note(case: Radiograph, model: str) -> str | None:
    """The banner exported images and reports carry where the guard fires for this case and model, else None."""
    domain = domain_quiet(case, model)
    return domain.message if domain is not None and domain.out_of_domain else None


def remember_session_case(radiograph: Radiograph, meta: dict) -> None:
    """Keeps a loaded case (and how it was loaded) so the worklist can reopen it in this session."""
    cases = dict(st.session_state.get("session_cases") or {})
    cases.pop(radiograph.sha256, None)
    cases[radiograph.sha256] = (radiograph, meta)
    while len(cases) > MAX_SESSION_CASES:
        cases.pop(next(iter(cases)))
    st.session_state["session_cases"] = cases


def _sample_with(sha256: str, label: str) -> tuple[Radiograph, dict] | None:
    """A bundled or real sample whose title the stored label carries and whose content has this hash."""
    for sample in all_samples():
        if sample.title not in label:
            continue
        try:
            radiograph = load_radiograph(sample.path)
        except XaiError:
            continue
        if radiograph.sha256 == sha256:
            return radiograph, {"origin": "sample", "labels": sample.labels, "source": sample.source,
                                "masks": sample.masks, "title": sample.title}
    return None


def reopen_case(sha256: str, label: str = "") -> bool:
    """Makes a stored case current again: one loaded earlier in this session, or a sample named in its label
    (False when the image is neither: uploads are not stored, only their hash, thumbnail and results)."""
    found = (st.session_state.get("session_cases") or {}).get(sha256)
    if found is None:
        found = _sample_with(sha256, label)
    if found is None:
        return False
    radiograph, meta = found
    set_case(radiograph, meta.get("origin", "upload"), labels=meta.get("labels"), source=meta.get("source"),
             masks=meta.get("masks"))
    if meta.get("title"):
        st.session_state["case_title"] = meta["title"]
    return True


def display_window(case: Radiograph) -> tuple[float, float] | None:
    """The display-only window chosen for this case on the Case page (None: the file's own)."""
    return (st.session_state.get("display_windows") or {}).get(case.sha256)


def display_pixels(case: Radiograph):
    """The case's pixels as the reader windowed them (display only: the model always gets `case` itself)."""
    window = display_window(case)
    if window is None:
        return case.pixels
    try:
        return rewindow(case, *window).pixels
    except XaiError:
        return case.pixels


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
        st.session_state.pop("kept_target", None)  # a new case opens on its own top finding
        st.session_state.pop("notice", None)
        st.session_state.update(case_origin=origin, case_labels=labels, case_source=source, case_masks=masks or {})
    remember_session_case(radiograph, {"origin": origin, "labels": labels, "source": source, "masks": masks or {},
                                       "title": st.session_state.get("case_title")})


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


@st.cache_resource(show_spinner=False)
def _known_problems() -> dict[str, str]:
    """Models found unusable in this server process (name -> why), for marking them in every picker."""
    return {}


def model_problem(name: str) -> str | None:
    """Why a model cannot be used here (e.g. missing weights), or None."""
    try:
        engine().model(name)
    except XaiError as exc:
        _known_problems()[name] = str(exc)
        return str(exc)
    _known_problems().pop(name, None)
    return None


def known_problems() -> dict[str, str]:
    """Models found unusable in this server process so far (name -> why). Pickers mark them in their help text and
    a caption (never in the option labels: a label that changes would drop the selection)."""
    return dict(_known_problems())


def compare_problem(name: str, target: str) -> str | None:
    """Why a classifier cannot join a model comparison on a finding (not a registered model, no such finding, no
    trained weights on this server: random testing weights do not count), or None. Loads the model once (cached)."""
    try:
        card = get_card(name)
    except XaiError as exc:
        return str(exc)
    if target not in card.labels:
        return f"{name} has no finding '{target}': it cannot be compared on it."
    problem = model_problem(name)
    if problem:
        return problem
    if engine().model(name).random_weights:
        return (f"{name} has no trained weights on this server (it would run on random weights, which only testing "
                f"mode allows): nothing to compare.")
    return None


def compare_choices(current: str, target: str) -> tuple[list[str], dict[str, str]]:
    """The classifiers a model comparison on `target` offers: those with the finding and trained weights here (the
    current model first), and for those with the finding that cannot run here, why (name -> message)."""
    offered: list[str] = []
    missing: dict[str, str] = {}
    for name in [current, *(m for m in available_models() if m != current)]:
        try:
            if target not in get_card(name).labels:
                continue
        except XaiError:
            continue
        problem = compare_problem(name, target)
        if problem:
            missing[name] = problem
        else:
            offered.append(name)
    return offered, missing


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


# ------------------------------------------------------------------------------------------ slow maps as jobs

@dataclass
class SlowJob:
    """A slow map this session asked for: the engine's background job (shared with every session that asked for
    the same map) and what it is for."""

    job: Job
    case: Radiograph | None  # for asking again after a cancel elsewhere (None once the map is in)
    model: str
    method: str
    target: str
    started: float  # time.time() when this session asked

    @property
    def running(self) -> bool:
        return not self.job.future.done()


class JobFollowers:
    """The sessions following each engine job (the engine's job table is shared across sessions and joins equal
    requests): a session's Cancel stops the job only where no other session still waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[Job, set[str]]] = {}

    def follow(self, job: Job, session: str) -> None:
        with self._lock:
            for job_id in [i for i, (known, _) in self._jobs.items() if known.future.done()]:
                del self._jobs[job_id]
            self._jobs.setdefault(job.id, (job, set()))[1].add(session)

    def leave(self, job: Job, session: str) -> bool:
        """Stop following; True when no other session follows the job."""
        with self._lock:
            _, sessions = self._jobs.get(job.id, (job, set()))
            sessions.discard(session)
            if sessions:
                return False
            self._jobs.pop(job.id, None)
            return True


@st.cache_resource(show_spinner=False)
def job_followers() -> JobFollowers:
    """The followers of the engine's jobs (one table per server process, like the engine)."""
    return JobFollowers()


def _session_token() -> str:
    token = st.session_state.get(SLOW_SESSION)
    if token is None:
        token = st.session_state[SLOW_SESSION] = uuid.uuid4().hex
    return token


def slow_key(case: Radiograph, model: str, target: str, method: str) -> tuple[str, str, str, str]:
    return case.sha256, model, target, method


def slow_jobs() -> dict[tuple, SlowJob]:
    """This session's slow maps, running or finished, by key (never another session's)."""
    return dict(st.session_state.get(SLOW_JOBS) or {})


def slow_job(key: tuple) -> SlowJob | None:
    return slow_jobs().get(key)


def running_slow_jobs() -> list[SlowJob]:
    """This session's slow maps still computing (or waiting for the model), in the order they were asked for."""
    return [entry for entry in slow_jobs().values() if entry.running]


def slow_note(key: tuple) -> tuple[str, str] | None:
    """Why this session's slow map is not there: ("cancelled", text) or ("error", text), or None."""
    return (st.session_state.get(SLOW_NOTES) or {}).get(key)


def _set_note(key: tuple, note: tuple[str, str] | None) -> None:
    notes = dict(st.session_state.get(SLOW_NOTES) or {})
    if note is None:
        notes.pop(key, None)
    else:
        notes[key] = note
    st.session_state[SLOW_NOTES] = notes


def _keep(jobs: dict[tuple, SlowJob]) -> None:
    """Store the session's slow maps, the running ones and the newest `MAX_SLOW_DONE` finished ones."""
    done = [key for key, entry in jobs.items() if not entry.running]
    for key in done[:max(0, len(done) - MAX_SLOW_DONE)]:
        del jobs[key]
    st.session_state[SLOW_JOBS] = jobs


def submit_slow(case: Radiograph, model: str, method: str, target: str) -> None:
    """Start (or join) the background job of a slow map; the Compute button's callback, so it never raises: a
    refusal (a full queue, a model that cannot run) becomes the tile's note."""
    key = slow_key(case, model, target, method)
    _set_note(key, None)
    try:
        job = engine().submit_explain(case, model, method, target)
    except XaiError as exc:
        _set_note(key, ("error", str(exc)))
        return
    job_followers().follow(job, _session_token())
    jobs = slow_jobs()
    jobs[key] = SlowJob(job, case, model, method, target, time.time())
    _keep(jobs)


def cancel_slow(key: tuple) -> None:
    """This session no longer wants the map: the tile goes back to "not computed yet" with the note "cancelled";
    the job itself stops (at its next checkpoint) unless another session still waits for the same map."""
    jobs = slow_jobs()
    entry = jobs.pop(key, None)
    if entry is None:
        return
    if entry.running and job_followers().leave(entry.job, _session_token()):
        entry.job.cancel()
    _keep(jobs)
    _set_note(key, ("cancelled", "cancelled; Compute starts it again."))


def _forget(key: tuple, note: tuple[str, str]) -> None:
    jobs = slow_jobs()
    jobs.pop(key, None)
    _keep(jobs)
    _set_note(key, note)


def settle_slow(key: tuple) -> Explanation | None:
    """The finished map of this session's job for `key`, or None (not asked for, still running, or it failed:
    then the job is forgotten and the reason kept as the tile's note, one line, never a traceback). A job cancelled
    by someone else (or one this session had just cancelled and then asked for again) is started again."""
    entry = slow_job(key)
    if entry is None or entry.running:
        return None
    try:
        explanation = entry.job.result(0)
    except Cancelled:  # not by this session: its Cancel forgets the job at once
        try:
            job = engine().submit_explain(entry.case, entry.model, entry.method, entry.target)
        except XaiError as exc:
            _forget(key, ("error", str(exc)))
            return None
        job_followers().follow(job, _session_token())
        jobs = slow_jobs()
        jobs[key] = replace(entry, job=job)
        _keep(jobs)
        return None
    except XaiError as exc:
        _forget(key, ("error", str(exc)))
        return None
    except Exception as exc:  # a failure inside the job must not take the page down
        _forget(key, ("error", f"{type(exc).__name__}: {exc}"))
        return None
    if entry.case is not None:  # the job holds the map now: the session need not keep the image for it
        jobs = slow_jobs()
        jobs[key] = replace(entry, case=None)
        st.session_state[SLOW_JOBS] = jobs
    return explanation


def slow_timing(entry: SlowJob) -> tuple[float, float | None]:
    """(seconds since this session asked, an estimate of the seconds left or None): the method's last time on this
    model in this process less the time elapsed, else what the reported progress extrapolates to."""
    elapsed = max(0.0, time.time() - entry.started)
    return elapsed, entry.job.seconds_left(elapsed, engine().expected_seconds(entry.model, entry.method))
