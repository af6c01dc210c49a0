"""Dashboard pages through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

MODEL = "xrv-densenet121-nih"


@pytest.fixture
def app(monkeypatch) -> AppTest:
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception
    at.sidebar.selectbox(key="model").set_value(MODEL).run()
    return at


def findings(at: AppTest) -> str:
    return at.metric[0].value


def test_case_page_renders_and_invites_a_case(app):
    assert not app.exception
    assert any("Load a radiograph" in i.value for i in app.info)


def test_sample_pick_and_upload_change_predictions(app, real_cxr):
    samples = app.selectbox(key="sample").options
    assert any("NIH" in s for s in samples)
    app.selectbox(key="sample").set_value(next(s for s in samples if "00000001_000" in s)).run()
    assert not app.exception and not app.error
    first = app.session_state["prediction"]
    mono1 = (real_cxr / "dicom" / "cr_chest_monochrome1.dcm").read_bytes()
    app.file_uploader(key="upload").upload("case.dcm", mono1, "application/dicom").run()
    assert not app.exception and not app.error
    assert [s.label for s in app.slider] == ["Window centre", "Window width"], "DICOM window sliders are shown"
    second = app.session_state["prediction"]
    assert app.session_state["case"].source_name == "case.dcm"
    assert second.sha256 != first.sha256
    assert (second.probabilities != first.probabilities).any()


@pytest.mark.parametrize(
    "name,data",
    [("notes.txt", b"hello"), ("empty.png", b""), ("cut.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00")],
)
def test_bad_upload_shows_message_and_session_keeps_working(app, real_cxr, name, data):
    app.file_uploader(key="upload").upload(name, data, "application/octet-stream").run()
    assert not app.exception
    assert app.error and ("Expected" in app.error[0].value or "DICOM" in app.error[0].value)
    good = (real_cxr / "nih" / "00000002_000.png").read_bytes()
    app.file_uploader(key="upload").upload("good.png", good, "image/png").run()
    assert not app.exception and not app.error
    assert app.metric, "predictions are shown again"


def test_missing_weights_are_reported_not_raised(monkeypatch, tmp_path, real_cxr):
    monkeypatch.delenv("XAI_ALLOW_RANDOM_WEIGHTS", raising=False)
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path))
    import xai_core.engine as engine_module

    monkeypatch.setattr(engine_module, "_ENGINE", None)
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model").set_value("xrv-densenet121-all").run()
    at.file_uploader(key="upload").upload("a.png", (real_cxr / "nih" / "00000002_000.png").read_bytes(),
                                          "image/png").run()
    assert not at.exception
    assert any("XAI_WEIGHTS_DIR" in e.value for e in at.error)
    st.cache_resource.clear()


def test_opens_on_demo_model_and_phantom_sample_shows_ground_truth(monkeypatch):
    monkeypatch.delenv("XAI_ALLOW_RANDOM_WEIGHTS", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert at.sidebar.selectbox(key="model").value == "demo"
    sample = next(s for s in at.selectbox(key="sample").options if "samples-0-000007" in s)
    at.selectbox(key="sample").set_value(sample).run()
    assert not at.exception and not at.error
    assert any("not for clinical use" in i.value for i in at.info)
    assert any("Cardiomegaly, Effusion" in c.value for c in at.caption)
    positives = at.metric[0].value
    assert "Cardiomegaly" in positives and "Effusion" in positives


def _pick_phantom_sample(at: AppTest, finding: str) -> str:
    title = next(s for s in at.selectbox(key="sample").options if "phantom" in s and finding in s)
    at.selectbox(key="sample").set_value(title).run()
    assert not at.exception and not at.error
    return title


def test_explain_page_without_a_case_says_what_to_do(app):
    app.switch_page("pages/explain_page.py").run()
    assert not app.exception
    assert any("No case loaded" in i.value for i in app.info)


def test_target_and_methods_give_overlays(app):
    _pick_phantom_sample(app, "Effusion")
    app.switch_page("pages/explain_page.py").run()
    assert not app.exception and not app.error
    methods = app.multiselect(key="methods").value
    assert "gradcam" in methods and "scorecam" not in methods, "fast methods are on by default"
    assert len(app.get("plotly_chart")) == len(methods)
    assert {e for e in app.session_state["explanations"]} == set(methods)
    app.selectbox(key="target").set_value("Effusion").run()
    app.multiselect(key="methods").set_value(["gradcam", "random"]).run()
    assert not app.exception and not app.error
    explanations = app.session_state["explanations"]
    assert set(explanations) == {"gradcam", "random"}
    assert all(e.target == "Effusion" for e in explanations.values())
    assert any("ms" in m.value for m in app.markdown), "per-method time is shown"
    assert app.toggle(key="truth").value, "phantom samples show their ground-truth outline by default"
    labels = [b.label for b in app.get("download_button")]
    assert labels.count("Overlay PNG") == 2 and any("NPZ" in label for label in labels)


def test_explain_page_survives_a_model_without_the_method(app):
    _pick_phantom_sample(app, "Cardiomegaly")
    app.switch_page("pages/explain_page.py").run()
    app.sidebar.selectbox(key="model").set_value("xrv-resnet50-all").run()
    assert not app.exception
    assert "nemt" not in app.multiselect(key="methods").options


def test_a_verdict_survives_a_new_session_on_the_same_store(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.sidebar.selectbox(key="model").set_value(MODEL).run()
    _pick_phantom_sample(at, "Nodule")
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    at.switch_page("pages/review_page.py").run()
    assert not at.exception
    at.radio(key="verdict-gradcam").set_value("disagree")
    at.text_area(key="comment-gradcam").input("looks at the tag")
    at.button[0].click().run()
    assert not at.exception and any("Saved" in s.value for s in at.success)

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    again.switch_page("pages/review_page.py").run()
    assert not again.exception
    table = again.table[0].value
    assert list(table["verdict"]) == ["disagree"] and list(table["comment"]) == ["looks at the tag"]
    assert again.get("download_button"), "the case report can be exported"


def test_refine_page_shows_region_refined_map_and_certainty(app):
    _pick_phantom_sample(app, "Cardiomegaly")
    app.switch_page("pages/refine_page.py").run()
    assert not app.exception and not app.error
    app.selectbox(key="target").set_value("Cardiomegaly").run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["cIoU (top-p% vs region)", "cAUITC", "Inside-mass"]
    assert len(app.get("plotly_chart")) == 4  # original, refined, gauge, IoU curve


def test_evaluate_page_runs_a_small_evaluation(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app.switch_page("pages/evaluate_page.py").run()
    assert not app.exception
    app.number_input(key="eval_n").set_value(3).run()
    app.button(key="eval_run").click().run()
    assert not app.exception and not app.error
    assert app.get("download_button"), "per-image CSV and summary JSON can be downloaded"
    assert app.dataframe, "the summary table is shown"
    app.text_input(key="eval_data").input("phantom:nowhere").run()
    app.button(key="eval_run").click().run()
    assert not app.exception and app.error and "could not run" in app.error[0].value


def test_concepts_page_ranks_neurons_and_browses_the_bundled_annotation(monkeypatch):
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("pages/concepts_page.py").run()
    assert not at.exception and not at.error
    assert any("Load a case" in i.value for i in at.info), "no case yet: says what to do, the browser still works"
    at.switch_page("pages/case_page.py").run()
    _pick_phantom_sample(at, "Effusion")
    at.switch_page("pages/concepts_page.py").run()
    at.selectbox(key="target").set_value("Effusion").run()
    assert not at.exception and not at.error
    overlays = [c for image in at.get("image") for c in image.captions if "contribution" in c]
    assert len(overlays) == 6, "one activation overlay per top neuron"
    assert at.dataframe, "the neuron table is shown"
    at.text_input(key="concept_query").input("effusion").run()
    assert not at.exception and not at.error
    neurons = at.selectbox(key="concept_neuron").options
    assert neurons, "the feature layer has neurons named by an effusion concept"
    at.text_input(key="concept_query").input("no such concept").run()
    assert any("No neuron has a concept matching" in w.value for w in at.warning)
    at.text_input(key="concept_query").input("").run()
    at.radio(key="concept_layer").set_value("output").run()
    assert not at.exception
    options = at.selectbox(key="concept_neuron").options
    assert len(options) == 7 and "Effusion" in " ".join(options), "output layer: one neuron per label"


def test_concepts_page_without_an_annotation_says_how_to_make_one(app):
    app.switch_page("pages/concepts_page.py").run()
    assert not app.exception and not app.error
    assert any("annotate-neurons" in i.value for i in app.info)
