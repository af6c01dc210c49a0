"""Dashboard pages through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import sqlite3
import tomllib
from collections.abc import Iterator

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from tests.conftest import ROOT

MODEL = "xrv-densenet121-nih"
SHIPPED_ADDRESS = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["address"]


def bind(address: str) -> Iterator[None]:
    """Serve the AppTest app as if bound to `address` (config is process-wide: restored afterwards)."""
    previous = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        yield
    finally:
        config.set_option("server.address", previous)


def bind_with_own_engine(monkeypatch: pytest.MonkeyPatch, address: str) -> Iterator[None]:
    """`bind`, with an engine and resource cache of the test's own: the process-wide engine is made with the
    random-weights flag of the first page run, so one made by another test would carry that test's flag."""
    import streamlit as st

    import xai_core.engine as engine_module

    monkeypatch.setattr(engine_module, "_ENGINE", None)
    st.cache_resource.clear()
    try:
        yield from bind(address)
    finally:
        st.cache_resource.clear()


@pytest.fixture(autouse=True)
def shipped_settings(monkeypatch, tmp_path) -> Iterator[None]:
    """The app as `make run` serves it: the address from .streamlit/config.toml (whatever the test's working
    folder), no users file, no identity provider, no extra evaluation folders; a case store of the test's own."""
    for name in ("XAI_USERS_FILE", "XAI_OIDC_DOMAINS", "XAI_EVAL_FOLDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    yield from bind(SHIPPED_ADDRESS)


def shown(at: AppTest) -> list[tuple[str, str]]:
    """(element type, everything it sends to the browser as text) for every element on the page and sidebar."""
    out = []

    def visit(node) -> None:
        if isinstance(node, Block):
            if getattr(node, "proto", None) is not None:
                out.append((node.type, str(node.proto)))
            for child in node.children.values():
                visit(child)
            return
        text = str(node.proto)
        if node.type == "dataframe":
            text += "\n" + node.value.to_string()
        out.append((node.type, text))

    visit(at.main)
    visit(at.sidebar)
    return out


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


def test_real_samples_join_the_picker(app, real_cxr):
    samples = app.selectbox(key="sample").options
    assert any("NIH" in s for s in samples)
    app.selectbox(key="sample").set_value(next(s for s in samples if "00000001_000" in s)).run()
    assert not app.exception and not app.error, [e.value for e in [*app.exception, *app.error]]
    assert app.session_state["prediction"] is not None


def test_sample_pick_and_upload_change_predictions(app, monochrome1_dicom):
    from xai_core.samples import bundled_samples

    app.selectbox(key="sample").set_value(bundled_samples()[3].title).run()  # a phantom effusion, shipped
    assert not app.exception and not app.error
    first = app.session_state["prediction"]
    mono1 = monochrome1_dicom.read_bytes()
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
def test_bad_upload_shows_message_and_session_keeps_working(app, sample_png, name, data):
    app.file_uploader(key="upload").upload(name, data, "application/octet-stream").run()
    assert not app.exception
    assert app.error and ("Expected" in app.error[0].value or "DICOM" in app.error[0].value)
    good = sample_png.read_bytes()
    app.file_uploader(key="upload").upload("good.png", good, "image/png").run()
    assert not app.exception and not app.error
    assert app.metric, "predictions are shown again"


def test_missing_weights_are_reported_not_raised(monkeypatch, tmp_path, sample_png):
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
    at.file_uploader(key="upload").upload("a.png", sample_png.read_bytes(),
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
    _to_review(at)
    at.radio(key="verdict-gradcam").set_value("disagree")
    at.text_area(key="comment-gradcam").input("looks at the tag")
    at.button[0].click().run()
    assert not at.exception and any("Saved" in s.value for s in at.success)

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    again.switch_page("pages/review_page.py").run()
    assert not again.exception
    table = next(d.value for d in again.dataframe if "verdict" in d.value.columns)
    assert list(table["verdict"]) == ["disagree"] and list(table["comment"]) == ["looks at the tag"]
    assert list(table["reviewer"]) == ["local"] and list(table["role"]) == ["admin"], "the local user, not free text"
    assert again.get("download_button"), "the case report can be exported"


def test_refine_page_says_the_verdict_in_plain_words_only_for_reported_findings(app, tmp_path, monkeypatch):
    from tests.test_segu import labelled_scores
    from xai_core import certainty
    from xai_core.engine import get_engine

    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(certainty, "shipped_calibrations_file", lambda: tmp_path / "shipped.json")
    app.sidebar.selectbox(key="model").set_value("demo").run()
    _pick_phantom_sample(app, "Cardiomegaly")
    app.switch_page("pages/refine_page.py").run()
    assert not app.exception and not app.error
    assert any("No verdict" in i.value and "no SegU calibration" in i.value for i in app.info) or any(
        "below its operating point" in i.value for i in app.info), "uncalibrated: no verdict, and it says why"
    engine = get_engine()  # the page's engine: a calibration of its demo / Grad-CAM / default SegU region
    segmenter = certainty.default_segmenter("demo")
    scores, correct, labels = labelled_scores()
    record = certainty.calibration_record(
        certainty.fit_calibration(scores, correct, labels), data="phantom:val", seed=0, n_cases=60, percent=5.0,
        model_weights=certainty.weights_id(engine.model("demo")),
        segmenter_weights=certainty.weights_id(engine.model(segmenter)), figures={})
    certainty.store_calibration("demo", "gradcam", segmenter, record)
    seen = {"reported": 0, "rejected": 0}
    for label in app.selectbox(key="target").options:
        app.selectbox(key="target").set_value(label).run()
        assert not app.exception and not app.error
        metrics = {m.label: m for m in app.metric}
        if any(f"{label} is below its operating point" in i.value for i in app.info):
            seen["rejected"] += 1
            assert not {"cIoU", "Probability the finding is right"} & set(metrics), "nothing shown below it"
            assert len(app.get("plotly_chart")) == 2  # the original and the SegX map only
            continue
        seen["reported"] += 1
        assert set(metrics) >= {"Probability the finding is right", "Finding probability (the model's)", "cIoU",
                                "cAUITC", "Inside-mass"}
        assert all(m.proto.help for m in metrics.values()), "every score has its help text"
        verdicts = [a.value for a in [*app.success, *app.warning] if "the explanation lies" in a.value.lower()]
        assert len(verdicts) == 1 and verdicts[0].endswith(("likely right.", "doubt this finding."))
        assert metrics["Probability the finding is right"].value.endswith("%")
        assert len(app.get("plotly_chart")) == 4  # original, refined, the probability gauges, IoU curve
    assert seen["reported"] >= 1 and seen["rejected"] >= 1, seen


def test_evaluate_page_runs_a_small_evaluation(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app.switch_page("pages/evaluate_page.py").run()
    assert not app.exception
    app.number_input(key="eval_n").set_value(3).run()
    app.button(key="eval_run").click().run()
    assert not app.exception and not app.error
    assert app.get("download_button"), "per-image CSV and summary JSON can be downloaded"
    assert app.dataframe, "the summary table is shown"
    pooled = app.dataframe[0].value
    assert {"complexity", "sparseness", "relevance_mass"} <= set(pooled.columns), "map shape beside the rest"
    assert list(pooled["method"]) == ["Grad-CAM", "random baseline"]
    rows = app.selectbox(key="eval_view")
    assert rows.value == "Pooled (all findings)" and len(rows.options) > 1, "pooled, then one entry per finding"
    rows.set_value(rows.options[1]).run()
    assert not app.exception and not app.error
    one = app.dataframe[0].value
    assert list(one["method"]) == ["Grad-CAM", "random baseline"] and "complexity" in one.columns
    assert app.selectbox(key="eval_data").options == ["phantom:test", "phantom:val", "phantom:train"], \
        "the phantom splits only: no server folder can be typed in"
    assert not app.text_input, "no free-text data field"
    assert any(c.value.startswith("Removal: road(") and "gaze kernel: mimic" in c.value and
               "no baseline self-check" in c.value for c in app.caption), \
        "what the run was computed with (localisation and shape only: no removal metric, no check)"


def test_evaluate_page_marks_invalid_pairs_with_the_reason_and_shows_pic_coverage_per_finding(
        app, tmp_path, monkeypatch, flat_reads_effusion_check):
    from tests.conftest import PER_IMAGE
    from xai_core.evaluation import summary_document
    from xai_core.files import strict_json

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    (out / "per_image.csv").write_text(PER_IMAGE)
    metrics = ["deletion_auc", "complexity", "sic_auc"]
    document = summary_document(out / "per_image.csv", ["gradcam", "random"], metrics,
                                flat_reads_effusion_check(metrics))
    (out / "summary.json").write_text(strict_json(document))
    app.session_state["eval_out"] = str(out)
    app.switch_page("pages/evaluate_page.py").run()
    assert not app.exception and not app.error
    pooled = app.dataframe[0].value
    assert pooled.loc[0, "deletion_auc"].startswith("0.300") and pooled.loc[0, "deletion_auc"].endswith("*")
    assert not pooled.loc[0, "complexity"].endswith("*")
    warning = app.warning[0].value
    assert "deletion_auc leaves out Effusion: the removed image reads as Effusion (p = 0.99" in warning
    coverage = next(d.value for d in app.dataframe if "blurred_as_high" in d.value.columns)
    mass = coverage[(coverage["curve"] == "SIC") & (coverage["finding"] == "Mass")].iloc[0]
    assert (mass["positives"], mass["kept"], mass["low_score"]) == (2, 1, 1)
    assert any("low_score:" in c.value for c in app.caption), "what each skip rule means"

    app.selectbox(key="eval_view").set_value("Effusion").run()
    assert not app.exception
    effusion = app.dataframe[0].value
    assert effusion.loc[0, "deletion_auc"].startswith("0.800") and "invalid" in effusion.loc[0, "deletion_auc"], \
        "the value is still shown, marked invalid"
    assert "invalid" not in effusion.loc[0, "complexity"] and "Effusion" in app.warning[0].value
    app.selectbox(key="eval_view").set_value("Mass").run()
    assert not app.exception and not app.warning, "no invalid pair for Mass"
    assert "invalid" not in app.dataframe[0].value.loc[0, "deletion_auc"]


def test_evaluate_page_reads_only_allow_listed_folders_and_reports_a_bad_one(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site-data").mkdir()  # listed by the server, but without labels.csv
    monkeypatch.setenv("XAI_EVAL_FOLDERS", str(tmp_path / "site-data"))
    app.switch_page("pages/evaluate_page.py").run()
    assert app.selectbox(key="eval_data").options == ["phantom:test", "phantom:val", "phantom:train",
                                                      "folder:site-data"]
    app.selectbox(key="eval_data").set_value("folder:site-data").run()
    app.number_input(key="eval_n").set_value(2).run()
    app.button(key="eval_run").click().run()
    assert not app.exception and app.error and "could not run" in app.error[0].value
    assert "labels.csv" in app.error[0].value


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
    from xai_core.mammi import AnnotationStore, bundled_annotation

    store = AnnotationStore(bundled_annotation("demo", "features"))
    named = [record for record in store.neurons() if record.concepts]
    store.close()
    term = named[0].concepts[0]  # a concept the bundled annotation gives some neuron, whatever the VLM's weights
    at.text_input(key="concept_query").input(term).run()
    assert not at.exception and not at.error
    neurons = at.selectbox(key="concept_neuron").options
    assert len(neurons) == sum(term in record.concepts for record in named), f"the neurons named '{term}'"
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


# Internal names and parameters that belong in tooltips, not in what a clinician reads
CONCEPT_JARGON = ("features.norm5", "p = ", "beta", "mean_text_similarity", "hit_rate", "logit", "phantom:train",
                  "demo-clip", "pooled", "ReLU", "S(c)")
UNCERTAIN_WORDS = "Uncertain concepts: no word from the reports matched"


def visible_text(at: AppTest) -> list[str]:
    """The text a reader sees without opening a tooltip: headings, captions, markdown, notes, widget labels and
    options, table headers and cells, image captions (help texts are left out)."""
    out = [e.value for kind in ("subheader", "caption", "markdown", "info", "warning", "error")
           for e in at.get(kind)]
    for kind in ("selectbox", "radio", "text_input", "toggle"):
        for widget in at.get(kind):
            out.append(widget.label)
            out.extend(str(option) for option in getattr(widget, "options", []))
    for table in at.dataframe:
        out.append(" ".join(map(str, table.value.columns)) + "\n" + table.value.to_string())
    out.extend(caption for image in at.get("image") for caption in image.captions)
    return out


def concepts_app(monkeypatch, finding: str | None = None) -> AppTest:
    """The Concepts page of `demo`, with a phantom case of `finding` loaded (and chosen) when one is given."""
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    if finding:
        at.switch_page("pages/case_page.py").run()
        _pick_phantom_sample(at, finding)
    at.switch_page("pages/concepts_page.py").run()
    if finding:
        at.selectbox(key="target").set_value(finding).run()
    assert not at.exception and not at.error
    return at


def annotation_copy(tmp_path, monkeypatch, *statements: str) -> None:
    """The bundled annotations of demo, copied and changed by SQL `statements` (on the feature layer), served in
    their place to the page and the engine."""
    import shutil

    import xai_core.mammi.annotate as annotate

    folder = tmp_path / "mammi"
    shutil.copytree(annotate.ANNOTATIONS_DIR, folder, ignore=shutil.ignore_patterns("*.npz", "*.tmp"))
    with sqlite3.connect(folder / "demo-features-demo-clip-demo.sqlite") as db:
        for statement in statements:
            db.execute(statement)
    db.close()
    monkeypatch.setattr(annotate, "ANNOTATIONS_DIR", folder)


def representative_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if "representative images" in m.value)


def test_concepts_page_speaks_plain_words_and_keeps_the_parameters_in_tooltips(monkeypatch):
    at = concepts_app(monkeypatch, "Effusion")
    for layer in ("features", "output"):
        at.radio(key="concept_layer").set_value(layer).run()
        assert not at.exception and not at.error
        seen = "\n".join(visible_text(at))
        assert "top 7%" in seen and "the rule's percentile" in seen
        leaked = [word for word in CONCEPT_JARGON if word in seen]
        assert leaked == [], f"{layer}: internal names in the visible text: {leaked}"
        summary = next(c for c in at.caption if "representatives are the probing images" in c.value)
        for exact in ("p = 93.0", "beta = 0.95", "phantom:train", "demo-clip", "cap = 50"):
            assert exact in summary.proto.help, f"the exact parameter '{exact}' is in the tooltip"
    from xai_core.mammi import AnnotationStore, bundled_annotation

    store = AnnotationStore(bundled_annotation("demo", "output"))
    hit_rate = store.meta()["validation"]["hit_rate"]
    store.close()
    check = next(c for c in at.caption if "right answer is known" in c.value)
    assert f"{hit_rate:.0%}" in check.value and "mean lexical similarity" in check.proto.help
    contribution = next(c for c in at.caption if "push the model most towards Effusion" in c.value)
    assert "logit" in contribution.proto.help and "features.norm5" in contribution.proto.help


def test_concepts_table_row_click_and_list_pick_select_the_same_neuron(monkeypatch):
    from xai_core.mammi import AnnotationStore, bundled_annotation

    store = AnnotationStore(bundled_annotation("demo", "features"))
    at = concepts_app(monkeypatch)
    table = at.dataframe[0].value
    first = at.selectbox(key="concept_neuron").value
    assert first == table["Neuron"][0] and at.session_state["concept_table"]["selection"]["rows"] == [0]
    row = next(i for i in range(1, len(table)) if store.neuron(int(table["Neuron"][i])).concepts
               != store.neuron(int(first)).concepts)
    at.session_state["concept_table"] = {"selection": {"rows": [row]}}  # what a click on that row sends
    at.run()
    picked = int(table["Neuron"][row])
    assert not at.exception and at.selectbox(key="concept_neuron").value == picked, "the row's neuron is chosen"
    record = store.neuron(picked)
    assert list(at.dataframe[1].value["Concept"]) == record.concepts, "its concepts are shown"
    assert representative_line(at).startswith(f"**{len(record.representatives)} representative images")
    at.run()
    assert at.selectbox(key="concept_neuron").value == picked, "the choice survives a rerun"
    at.switch_page("pages/case_page.py").run()
    at.switch_page("pages/concepts_page.py").run()
    assert at.selectbox(key="concept_neuron").value == picked, "and a visit to another page"
    assert at.session_state["concept_table"]["selection"]["rows"] == [row]
    other = int(table["Neuron"][row + 1])
    at.selectbox(key="concept_neuron").set_value(other).run()
    assert not at.exception and at.selectbox(key="concept_neuron").value == other, "the list is not overridden"
    assert at.session_state["concept_table"]["selection"]["rows"] == [row + 1], "the table follows the list"
    assert list(at.dataframe[1].value["Concept"]) == store.neuron(other).concepts
    at.text_input(key="concept_query").input("cardiomegaly").run()
    remaining = list(at.dataframe[0].value["Neuron"])
    chosen = at.selectbox(key="concept_neuron").value
    assert chosen in remaining and at.session_state["concept_table"]["selection"]["rows"] == [
        remaining.index(chosen)], "a search keeps table and list on one neuron"


def test_concepts_representatives_are_all_shown_with_their_count(monkeypatch):
    from xai_core.mammi import AnnotationStore, bundled_annotation

    at = concepts_app(monkeypatch)
    for layer in ("features", "output"):
        at.radio(key="concept_layer").set_value(layer).run()
        store = AnnotationStore(bundled_annotation("demo", layer))
        cap = store.meta()["cap"]
        neurons = [at.selectbox(key="concept_neuron").value,
                   max(store.neurons(), key=lambda r: len(r.representatives)).neuron]
        for neuron in neurons:
            at.selectbox(key="concept_neuron").set_value(neuron).run()
            assert not at.exception and not at.error
            record = store.neuron(neuron)
            count = len(record.representatives)
            edges, counts = record.histogram["edges"], record.histogram["counts"]
            surely_above = sum(c for c, low in zip(counts, edges[:-1], strict=True) if low > record.stats["threshold"])
            assert count >= min(cap, surely_above) and count > 0, "the rule's representatives, up to its cap"
            line = representative_line(at)
            assert line.startswith(f"**{count} representative images (all shown)**")
            assert ("At most 50 are kept" in line) == (count >= cap)
            pictures = [c for image in at.get("image") for c in image.captions if "response" in c]
            assert len(pictures) == count, "one picture per representative"
            assert pictures[0] == f"1. response {record.activations[0]:.2f}"
    assert at.toggle(key="concept_overlay").value, "activation overlays are on by default"


ONE_CONCEPT_SET = ("DELETE FROM concepts WHERE rank > 0", "UPDATE concepts SET concept = 'effusion'")


def test_concepts_case_neurons_that_share_one_concept_set_say_so_once(monkeypatch, tmp_path):
    annotation_copy(tmp_path, monkeypatch, *ONE_CONCEPT_SET, "UPDATE neurons SET uncertain = 0")
    at = concepts_app(monkeypatch, "Effusion")
    shared = [i.value for i in at.info if "share one concept set" in i.value]
    assert len(shared) == 1 and "`effusion`" in shared[0], "the six neurons, all named effusion, are said once"
    assert not [m.value for m in at.markdown if m.value.startswith("`")], "the chips are not repeated per neuron"
    assert not any(UNCERTAIN_WORDS in w.value for w in at.warning) and not any(
        "Uncertain" in c.value for c in at.caption), "every neuron is certain"


def test_concepts_case_neurons_show_their_own_concepts_and_uncertainty(monkeypatch, tmp_path):
    annotation_copy(tmp_path, monkeypatch, "UPDATE concepts SET concept = concept || ' ' || neuron WHERE rank = 0",
                    "UPDATE neurons SET uncertain = 1")
    at = concepts_app(monkeypatch, "Effusion")
    assert not any("share one concept set" in i.value for i in at.info)
    chips = [m.value for m in at.markdown if m.value.startswith("`")]
    assert len(chips) == 6 and len(set(chips)) == 6, "each case neuron with its own concepts"
    notes = [c for c in at.caption if c.value.endswith("Uncertain: closest guesses only.")]
    assert len(notes) == 6 and all(UNCERTAIN_WORDS in c.proto.help for c in notes)
    assert any(UNCERTAIN_WORDS in w.value for w in at.warning), "the chosen neuron's uncertainty is said in words"
    assert set(at.dataframe[0].value["Certain"]) == {"uncertain"}


def test_concepts_case_neurons_sharing_uncertain_concepts_get_one_note(monkeypatch, tmp_path):
    annotation_copy(tmp_path, monkeypatch, *ONE_CONCEPT_SET, "UPDATE neurons SET uncertain = 1")
    at = concepts_app(monkeypatch, "Effusion")
    assert any("share one concept set" in i.value for i in at.info)
    assert sum(UNCERTAIN_WORDS in w.value for w in at.warning) == 2, "once for the case's neurons, once in the browser"


# ---------------------------------------------------------------------------------------------- access, review, store

def test_the_shipped_config_serves_loopback_only_and_the_app_says_it_runs_as_the_local_admin():
    assert SHIPPED_ADDRESS == "127.0.0.1"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception and not at.error
    assert any("Local single-user mode" in c.value and "XAI_USERS_FILE" in c.value for c in at.sidebar.caption)
    assert at.session_state["user"].role == "admin"
    at.switch_page("pages/admin_page.py").run()  # researchers' and admins' pages are listed for the local admin
    assert not at.exception and any(s.value == "Case store" for s in at.subheader)


def _to_review(at: AppTest) -> None:
    at.sidebar.selectbox(key="model").set_value(MODEL).run()
    _pick_phantom_sample(at, "Nodule")
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    at.switch_page("pages/review_page.py").run()
    assert not at.exception


EVIL = '![pixel](https://evil.example/track.png) <img src="https://evil.example/a.png"> **bold**'


def test_comments_are_shown_as_plain_text_never_markdown_or_html(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    _to_review(at)
    at.radio(key="verdict-gradcam").set_value("unsure")
    at.text_area(key="comment-gradcam").input(EVIL)
    at.button[0].click().run()
    assert any("Saved" in s.value for s in at.success)
    at.run()  # the form now shows the latest verdict with its comment
    carriers = {kind for kind, text in shown(at) if "evil.example" in text and kind != "text_area"}
    assert carriers == {"text", "dataframe"}, "the comment reaches the page as plain text only"
    assert any(t.value == f"local: {EVIL}" for t in at.text)

    later = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    later.switch_page("pages/review_page.py").run()
    assert not later.exception
    assert {kind for kind, text in shown(later) if "evil.example" in text} == {"dataframe"}
    assert not later.table, "no st.table: its cells are Markdown"


def _garbage(path) -> None:
    path.write_bytes(b"not a database at all\n" * 100)


def _newer(path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()


def _foreign(path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()


@pytest.mark.parametrize("spoil,message", [(_garbage, "is damaged"), (_newer, "newer version of the dashboard"),
                                           (_foreign, "not a case store")])
def test_a_store_fault_shows_its_message_and_what_to_do_not_a_traceback(monkeypatch, tmp_path, spoil, message):
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    spoil(tmp_path / "cases.sqlite")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    _to_review(at)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and "XAI_STORE_PATH" in at.error[0].value
    assert not at.get("form"), "no verdict can be entered into a store that cannot take it"
    at.switch_page("pages/case_page.py").run()
    assert not at.exception and not at.error, "the rest of the dashboard keeps working"


def test_a_store_with_a_corrupt_btree_never_says_saved(monkeypatch, tmp_path):
    from xai_core.store import CaseStore, case_name

    path = tmp_path / "cases.sqlite"
    store = CaseStore(path)
    for i in range(3):
        store.add_case(f"{i:064x}", case_name(f"{i:064x}"))
        store.add_verdict(f"{i:064x}", "demo", "Nodule", "gradcam", "agree", "fine")
    store.close()
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'verdicts'").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())  # the leaf's first cell pointer repeats the second
    start = (root - 1) * page
    data[start + 8:start + 10] = data[start + 10:start + 12]
    path.write_bytes(bytes(data))
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    _to_review(at)
    assert not at.exception and not at.success
    assert "integrity check" in at.error[0].value and "restore the latest backup" in at.error[0].value


def test_a_full_disk_while_saving_says_not_saved_and_why(monkeypatch, tmp_path):
    from xai_core.store import CaseStore

    path = tmp_path / "cases.sqlite"
    CaseStore(path).close()
    connect = CaseStore._connect

    def no_room(self):  # SQLite's own SQLITE_FULL: the file may not grow
        db = connect(self)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr(CaseStore, "_connect", no_room)
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    _to_review(at)
    at.radio(key="verdict-gradcam").set_value("agree")
    at.button[0].click().run()
    assert not at.exception and not at.success
    assert at.error[0].value.startswith("Not saved.") and "is full" in at.error[0].value
    assert "Free some space" in at.error[0].value


def test_an_uploads_label_and_a_samples_ground_truth_keep_apart(app):
    dicom = (ROOT / "assets" / "samples" / "dicom" / "samples-0-000003.dcm").read_bytes()
    app.file_uploader(key="upload").upload("scan.dcm", dicom, "application/dicom").run()
    sha = app.session_state["case"].sha256
    app.text_input(key=f"case_label-{sha[:12]}").input("left base").run()
    assert any(t.value == f"Shared as: case-{sha[:12]} · left base" for t in app.text)
    _pick_phantom_sample(app, "Effusion")
    assert any("Ground truth for this sample" in c.value for c in app.caption)
    sample = app.session_state["case"].sha256
    assert any(t.value.startswith(f"Shared as: case-{sample[:12]} · samples-") for t in app.text)
    app.file_uploader(key="upload").upload("scan.dcm", dicom, "application/dicom").run()
    assert not app.exception
    assert app.text_input(key=f"case_label-{sha[:12]}").value == "left base", "the label stays with its case"
