"""Slow maps without freezing the page (issue 28, item 6): on the Explain page a slow method's Compute starts a
background job of the engine; its tile shows progress, times and Cancel until the job ends, the header says what
this session has computing, and other sessions see none of it (AppTest, the bundled demo model, Integrated
Gradients: about a second on a CPU).

The job is made to wait deterministically: a helper thread holds the model's lock (as a forward of another request
would), so the job is queued, not finished, whatever the speed of the machine; releasing the lock lets it run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.test_compare_models import models_dir  # noqa: F401 (autouse: the demo models only, a fresh engine)
from xai_core.engine import get_engine
from xai_core.errors import ModelError
from xai_core.explainers.ig import IntegratedGradients
from xai_core.jobs import Cancelled, Job

TARGET = "Effusion"
BUSY = ":material/hourglass_top:"
CANCELLED = "Integrated Gradients: cancelled; Compute starts it again."


@contextmanager
def model_held(*models: str) -> Iterator[None]:
    """The models' locks held by another thread (as by a long forward): a job queued on them cannot start."""
    taken, release = threading.Event(), threading.Event()
    locks = [get_engine().lock(name) for name in models]

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        taken.set()
        release.wait(300)
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(60)
    try:
        yield
    finally:
        release.set()
        thread.join(60)


def explain_page(methods: list[str]) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    title = next(s for s in at.selectbox(key="sample").options if "phantom" in s and TARGET in s)
    at.selectbox(key="sample").set_value(title).run()
    at.switch_page("pages/explain_page.py").run()
    at.selectbox(key="target").set_value(TARGET).run()
    at.multiselect(key="methods").set_value(methods).run()
    assert not at.exception and not at.error
    return at


def session_job(at: AppTest, method: str = "ig", model: str = "demo") -> Job:
    """This session's engine job for the slow map (by the key the page files it under)."""
    key = (at.session_state["case"].sha256, model, TARGET, method)
    return at.session_state["slow_jobs"][key].job


def wait_for(job: Job, seconds: float = 180) -> None:
    """Until the job has ended (its result or its exception) and left the engine's table of jobs in flight, at most
    `seconds`."""
    deadline = time.monotonic() + seconds
    while not job.future.done() or any(known is job for known in get_engine().jobs.find(job.kind)):
        assert time.monotonic() < deadline, f"job {job.id} ({job.kind}) still running after {seconds} s"
        time.sleep(0.05)


def busy_lines(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith(BUSY)]


def tile_notes(at: AppTest) -> list[str]:
    """The info lines of tiles (the header's demo disclaimer is an info too)."""
    return [i.value for i in at.info if i.value.startswith("Integrated Gradients")]


def buttons(at: AppTest) -> dict[str, str]:
    return {b.key: b.label for b in at.button}


def test_compute_returns_at_once_with_a_progress_tile_and_the_map_comes_when_the_job_ends():
    at = explain_page(["gradcam", "ig"])
    assert set(at.session_state["explanations"]) == {"gradcam"}
    assert buttons(at)["compute-ig"] == "Compute Integrated Gradients"
    assert any(m.value.startswith("**Integrated Gradients** · not computed yet") for m in at.markdown)
    with model_held("demo"):
        at.button(key="compute-ig").click().run()  # would wait forever (time out) if it ran the method itself
        assert not at.exception and not at.error
        job = session_job(at)
        assert not job.future.done() and job.kind == "explain:ig"
        [bar] = at.get("progress")
        assert bar.value == 0 and "progress not reported yet" in bar.text and "s elapsed" in bar.text
        assert any(m.value.startswith("**Integrated Gradients** · computing in the background") for m in at.markdown)
        assert buttons(at)["cancel-ig"] == "Cancel" and "compute-ig" not in buttons(at)
        assert len(at.get("plotly_chart")) == 1, "only Grad-CAM's overlay so far"
        assert set(at.session_state["explanations"]) == {"gradcam"}
        at.slider(key="opacity").set_value(0.7).run()  # the rest of the page works while the job waits
        assert not at.exception and at.slider(key="opacity").value == 0.7
        assert len(at.get("progress")) == 1 and not job.future.done()
    wait_for(job)
    at.run()
    assert not at.exception and not at.error
    assert not at.get("progress") and "cancel-ig" not in buttons(at) and "compute-ig" not in buttons(at)
    explanations = at.session_state["explanations"]
    assert set(explanations) == {"gradcam", "ig"} and explanations["ig"] is job.result(0)
    assert explanations["ig"].target == TARGET and explanations["ig"].map.any()
    assert len(at.get("plotly_chart")) == 2, "Integrated Gradients' overlay is drawn"
    assert any(m.value.startswith("**Integrated Gradients** · ") and m.value.endswith(" ms") for m in at.markdown)
    assert get_engine().expected_seconds("demo", "ig") == pytest.approx(explanations["ig"].seconds)


def test_cancel_stops_the_job_and_the_tile_says_cancelled():
    at = explain_page(["ig"])
    with model_held("demo"):
        at.button(key="compute-ig").click().run()
        job = session_job(at)
        at.button(key="cancel-ig").click().run()
        assert not at.exception and not at.error
        assert job.cancelled.is_set(), "Cancel cancels the engine's job"
        assert not at.get("progress") and "cancel-ig" not in buttons(at)
        assert buttons(at)["compute-ig"] == "Compute Integrated Gradients", "back to not computed yet"
        assert any(m.value.startswith("**Integrated Gradients** · not computed yet") for m in at.markdown)
        assert tile_notes(at) == [CANCELLED]
    with pytest.raises(Cancelled):
        job.result(180)  # it stops at its first checkpoint, once it gets the model
    at.run()
    assert not at.exception and not at.error and not at.get("plotly_chart")
    assert "ig" not in at.session_state["explanations"]
    assert tile_notes(at) == [CANCELLED]
    at.button(key="compute-ig").click().run()  # and it can be asked for again
    wait_for(session_job(at))
    at.run()
    assert not at.exception and not tile_notes(at) and len(at.get("plotly_chart")) == 1


def test_compute_again_right_after_cancel_restarts_the_map():
    at = explain_page(["ig"])
    with model_held("demo"):
        at.button(key="compute-ig").click().run()
        at.button(key="cancel-ig").click().run()
        at.button(key="compute-ig").click().run()  # before the cancelled job has stopped: the engine rejoins it
        old = session_job(at)
        assert old.cancelled.is_set() and not old.future.done()
        assert len(at.get("progress")) == 1 and not tile_notes(at), "computing, not cancelled"
    wait_for(old)
    at.run()  # the rejoined job ended cancelled: this session still wants the map, so it is asked for again
    assert not at.exception and not tile_notes(at)
    new = session_job(at)
    assert new is not old and not new.cancelled.is_set()
    wait_for(new)
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 1 and "ig" in at.session_state["explanations"]


def test_the_header_shows_this_sessions_running_jobs_only_and_not_after():
    at = explain_page(["ig"])
    assert not busy_lines(at)
    other = explain_page(["ig"])  # another reviewer on the same server (the engine and its job table are shared)
    with model_held("demo"):
        at.button(key="compute-ig").click().run()
        job = session_job(at)
        assert busy_lines(at) == [f"{BUSY} 1 slow map computing: Integrated Gradients (no progress yet)"]
        other.run()
        assert not busy_lines(other), "never another session's jobs"
        at.switch_page("pages/case_page.py").run()
        assert busy_lines(at) == [f"{BUSY} 1 slow map computing: Integrated Gradients (no progress yet)"], "every page"
        at.switch_page("pages/explain_page.py").run()
    wait_for(job)
    at.run()
    assert not at.exception and not busy_lines(at)
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.parametrize("failure", [ModelError("the model ran out of memory"), RuntimeError("CUDA error: unknown")])
def test_a_failed_job_is_one_line_on_its_tile_never_a_traceback(monkeypatch, failure):
    def failing(self, handle, x, targets, **params):
        raise failure

    monkeypatch.setattr(IntegratedGradients, "explain", failing)
    at = explain_page(["gradcam", "ig"])
    with model_held("demo"):
        at.button(key="compute-ig").click().run()
        job = session_job(at)
    wait_for(job)
    at.run()
    assert isinstance(job.future.exception(), type(failure)), "the job itself failed"
    assert not at.exception and not at.get("progress") and "cancel-ig" not in buttons(at)
    [error] = at.error
    prefix = "" if isinstance(failure, ModelError) else "RuntimeError: "
    assert error.value == f"Integrated Gradients could not be computed: {prefix}{failure}"
    assert buttons(at)["compute-ig"] == "Compute Integrated Gradients", "it can be tried again"
    assert set(at.session_state["explanations"]) == {"gradcam"} and len(at.get("plotly_chart")) == 1


def test_one_sessions_cancel_leaves_a_job_another_session_waits_for():
    at = explain_page(["ig"])
    other = explain_page(["ig"])
    with model_held("demo"):
        at.button(key="compute-ig").click().run()
        other.button(key="compute-ig").click().run()
        job = session_job(at)
        assert session_job(other) is job, "the engine joins equal requests"
        at.button(key="cancel-ig").click().run()
        assert tile_notes(at) == [CANCELLED]
        assert not job.cancelled.is_set(), "the other session still waits for it"
        other.run()
        assert len(other.get("progress")) == 1
    wait_for(job)
    other.run()
    assert not other.exception and len(other.get("plotly_chart")) == 1
    at.run()
    assert not at.get("plotly_chart") and "compute-ig" in buttons(at), "the cancelling session asked for nothing"


def test_the_model_comparison_tiles_compute_in_the_background_too():
    at = explain_page(["gradcam"])
    at.toggle(key="compare").set_value(True).run()
    at.selectbox(key="compare_method").set_value("ig").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="compare_models").value == ["demo", "demo-shortcut"]
    assert buttons(at)["compare-compute-demo-shortcut"] == "Compute Integrated Gradients"
    with model_held("demo", "demo-shortcut"):
        at.button(key="compare-compute-demo-shortcut").click().run()
        assert not at.exception and not at.error
        job = session_job(at, model="demo-shortcut")
        assert len(at.get("progress")) == 1 and buttons(at)["compare-cancel-demo-shortcut"] == "Cancel"
        assert "compare-compute-demo" in buttons(at), "the other tile waits for its own Compute"
        assert busy_lines(at) == [f"{BUSY} 1 slow map computing: Integrated Gradients on demo-shortcut "
                                  f"(no progress yet)"], "the other model is named"
        assert not [c for c in at.get("plotly_chart") if "compare-overlay-" in c.proto.id]
    wait_for(job)
    at.run()
    assert not at.exception and not at.error and not at.get("progress") and not busy_lines(at)
    charts = [c.proto.id.rpartition("compare-overlay-")[2] for c in at.get("plotly_chart")
              if "compare-overlay-" in c.proto.id]
    assert charts == ["demo-shortcut"]
