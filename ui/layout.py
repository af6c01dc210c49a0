"""What every page starts with: the kept per-case context, the shared sidebar, the title and the case header (case,
model, finding and its probability, the demo disclaimer, notices, and while this session has slow maps computing,
a busy line saying which and how far)."""

from __future__ import annotations

import datetime
import zoneinfo

import streamlit as st

from ui import access, state
from ui.methods import method_name
from xai_core.engine import Prediction
from xai_core.errors import XaiError
from xai_core.imaging import Radiograph, to_png_bytes

DISCLAIMER = "Demonstration model: trained on synthetic radiographs, not for clinical use."
GUARD_HELP = ("The out-of-domain guard compares this image's features (what the model's last layer reads) with those "
              "of the images the model was trained on: the score is their Mahalanobis distance, and the threshold "
              "is set so that about 2% of held-out training-like images exceed it. Above it, findings, maps and "
              "certainty are still shown, marked as unreliable.")
RESEARCH_NOTE = "Research software: not a medical device, not for clinical use."


def sidebar() -> None:
    """Identity, model picker with its card, device, the current case's thumbnail."""
    with st.sidebar:
        st.header("Chest X-ray XAI")
        user = access.session_user()
        if user is not None:
            access.sidebar_identity(user)
        models = state.available_models()
        state.model_problem(state.current_model())  # known before the picker is drawn, so its help can say so
        problems = state.known_problems()
        st.selectbox("Model", models, key="model", on_change=state.on_model_change,
                     help="Models that cannot run on this server: " + "; ".join(problems) if problems else
                     "Every classifier of the registry; one that cannot run here says why when chosen.")
        model = state.current_model()
        if model in problems:
            st.caption(f"{model} cannot run here: see the page for what is missing.")
        try:
            card = state.card_summary(model)
        except XaiError:  # a card that cannot be summarised must not hide the page
            card = {}
        with st.expander("Model card"):
            st.json(card, expanded=False)
        st.caption(f"Device: {state.engine().device}")
        current = state.current_case()
        if current is not None:  # the file name is shown in this session only; others see the shared name
            st.image(to_png_bytes(current.pixels), caption=current.source_name, width=160)


def _finding_line(prediction: Prediction, target: str) -> str:
    finding = state.finding_summary(prediction, target)
    verdict = ("above its operating point" if finding["positive"]
               else "below its operating point: the model does not report it")
    return (f"**Finding:** {target} · probability {finding['probability']:.2f} ({verdict}, "
            f"{finding['threshold']:.2f})")


def header(*, uses_finding: bool = True) -> Prediction | None:
    """The case header: which case, model and finding this page shows, with the finding's probability. Returns
    the prediction (None without a case or when the model cannot run; the page says why)."""
    model = state.current_model()
    case = state.current_case()
    demo = state.is_demo_model(model)
    if demo:
        st.info(DISCLAIMER, icon=":material/science:")
    else:
        st.caption(RESEARCH_NOTE)
    if case is None:
        st.caption(f"**Model:** {model} · no case loaded")
        busy_line()
        return None
    prediction = state.prediction_quiet(case, model)
    parts = [f"**Case:** {state.shared_case_name(case)}", f"**Model:** {model}"]
    if prediction is not None and uses_finding:
        target = state.ensure_target(prediction)
        parts.append(_finding_line(prediction, target))
    st.markdown(" · ".join(parts))
    busy_line()
    if prediction is not None:
        domain_banner(case, model)
    notice = st.session_state.pop("notice", None)
    if notice:
        st.warning(notice, icon=":material/swap_horiz:")
    if prediction is not None and prediction.random_weights:
        st.warning("This model has random weights (testing mode): its findings and maps mean nothing.")
    return prediction


def busy_text(jobs: list[state.SlowJob]) -> str:
    """'1 slow map computing: XRAI 40%': this session's running slow maps (another model's are named: 'XRAI on
    demo-shortcut 40%')."""
    current = state.current_model()
    parts = []
    for entry in jobs:
        name = method_name(entry.method) + ("" if entry.model == current else f" on {entry.model}")
        progress = entry.job.progress
        parts.append(f"{name} {progress:.0%}" if progress is not None else f"{name} (no progress yet)")
    count = f"{len(jobs)} slow map{'s' if len(jobs) > 1 else ''} computing"
    return f":material/hourglass_top: {count}: {', '.join(parts)}"


def _busy() -> None:
    jobs = state.running_slow_jobs()
    if jobs:  # once they are done the line goes; the next full run stops the polling
        st.caption(busy_text(jobs))


def busy_line() -> None:
    """The header's busy indicator: while this session has slow maps computing, one line with what and how far,
    redrawn on its own every `state.SLOW_POLL_SECONDS` (only this session's jobs, never another reviewer's);
    nothing otherwise."""
    if state.running_slow_jobs():
        st.fragment(_busy, run_every=state.SLOW_POLL_SECONDS)()


def domain_banner(case: Radiograph, model: str) -> None:
    """The out-of-domain banner where the guard fires, with the score in a caption (and in its help text, how the
    guard decides), or a caption saying that this model's inputs are not checked."""
    domain = state.domain_quiet(case, model)
    if domain is None:
        return
    if domain.out_of_domain:
        st.warning(domain.message, icon=":material/report:")
        st.caption(f"Out-of-domain score {domain.score:.1f} (threshold {domain.threshold:.1f})",
                   help=f"{domain.score_line()}.\n\n{GUARD_HELP}")
    elif domain.out_of_domain is None:
        st.caption(f"Out-of-domain guard: {domain.note}.", help=GUARD_HELP)


def start(title: str, *, uses_finding: bool = True) -> Prediction | None:
    """Every page's first call: keeps the context, draws the sidebar, the title and the case header."""
    state.keep_context()
    sidebar()
    st.title(title)
    return header(uses_finding=uses_finding)


def local_time(iso: str | None) -> str:
    """A stored UTC timestamp as the reader's local time ('12 Mar 2025, 14:05 CET'): the browser's time zone where
    it is known, the server's otherwise."""
    if not iso:
        return ""
    try:
        moment = datetime.datetime.fromisoformat(str(iso).replace(" UTC", "").replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    zone = None
    try:
        name = st.context.timezone
        zone = zoneinfo.ZoneInfo(name) if name else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, AttributeError):
        zone = None
    local = moment.astimezone(zone)
    return local.strftime("%d %b %Y, %H:%M ") + (local.tzname() or "")
