"""Dashboard behaviour of issue 28: one per-case context across pages, stable selections, display-only W/L, honest
maps, Evaluate without a runnable model, the review workflow (AppTest, the bundled demo model)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, SAMPLES
from tests.test_app import SHIPPED_ADDRESS, bind
from xai_core.display import contour_mask, empty_reason, scale_map, window_presets
from xai_core.engine import get_engine
from xai_core.errors import InputError
from xai_core.evaluation import folder_cases
from xai_core.overlay import outlines, top_region


@pytest.fixture(autouse=True)
def shipped_settings(monkeypatch, tmp_path) -> Iterator[None]:
    for name in ("XAI_USERS_FILE", "XAI_OIDC_DOMAINS", "XAI_EVAL_FOLDERS", "XAI_ALLOW_RANDOM_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    yield from bind(SHIPPED_ADDRESS)


def _app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    assert not at.exception
    return at


def _pick(at: AppTest, finding: str) -> None:
    title = next(s for s in at.selectbox(key="sample").options if "phantom" in s and finding in s)
    at.selectbox(key="sample").set_value(title).run()
    assert not at.exception and not at.error


def _header(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Case:**"))


# ------------------------------------------------------------------------------------------------ display maths

def test_flat_and_near_empty_maps_are_flagged_and_get_no_contour():
    flat = np.full((32, 32), 0.3, np.float32)
    assert "flat" in empty_reason(flat)
    assert "zero" in empty_reason(np.zeros((8, 8), np.float32))
    weak = np.zeros((32, 32), np.float32)
    weak[4, 4] = 0.0024  # NEMt-like: absolute 0-1 map with almost nothing in it
    assert "largest value" in empty_reason(weak, unit_range=True)
    shown = scale_map(weak, "per map", unit_range=True)
    assert shown.empty and not shown.heat.any(), "per-map scaling never stretches an empty map"
    assert not contour_mask(shown, 10, "nemt").any()
    real = np.zeros((32, 32), np.float32)
    real[10:20, 10:20] = 0.8
    absolute = scale_map(real, "absolute", unit_range=True)
    assert not absolute.empty and (absolute.low, absolute.high) == (0.0, 1.0)
    assert np.isclose(absolute.heat.max(), 0.8), "absolute scaling keeps the map's own values"
    relative = scale_map(real * 5, "absolute")
    assert (relative.low, relative.high) == (0.0, pytest.approx(4.0)) and relative.heat.max() == 1.0


def test_speckled_maps_are_smoothed_before_their_contour():
    rng = np.random.default_rng(0)
    speckle = rng.random((64, 64)).astype(np.float32)
    display = scale_map(speckle, "absolute", unit_range=True)
    raw_pieces = len(outlines(top_region(display.heat, 10)))
    smooth_pieces = len(outlines(contour_mask(display, 10, "random")))
    assert smooth_pieces < raw_pieces / 5, "a few regions, not speckle"


def test_window_presets_lie_in_the_files_range_and_mirror_for_monochrome1():
    raw = np.linspace(0, 4095, 100, dtype=np.float32)
    presets = window_presets(raw)
    assert set(presets) == {"lung", "mediastinum", "bone"}
    assert all(0 <= c <= 4095 and w > 0 for c, w in presets.values())
    mirrored = window_presets(raw, "MONOCHROME1")
    assert mirrored["lung"][0] == pytest.approx(4095 - presets["lung"][0])


# ------------------------------------------------------------------------------------------------ the context

def test_the_finding_methods_and_overlay_settings_survive_other_pages():
    at = _app()
    _pick(at, "Effusion")
    at.switch_page("pages/explain_page.py").run()
    at.selectbox(key="target").set_value("Effusion").run()
    at.multiselect(key="methods").set_value(["gradcam", "random"]).run()
    at.slider(key="opacity").set_value(0.3).run()
    at.selectbox(key="colour_map").set_value("viridis").run()
    assert not at.exception and "Effusion" in _header(at)
    for page in ("pages/refine_page.py", "pages/concepts_page.py", "pages/case_page.py", "pages/review_page.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert "**Finding:** Effusion" in _header(at), f"the header keeps the finding on {page}"
    at.switch_page("pages/explain_page.py").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="target").value == "Effusion"
    assert at.multiselect(key="methods").value == ["gradcam", "random"]
    assert at.slider(key="opacity").value == 0.3 and at.selectbox(key="colour_map").value == "viridis"
    assert set(at.session_state["explanations"]) == {"gradcam", "random"}


def test_a_new_case_opens_on_its_own_top_finding_and_a_rejected_finding_is_marked_on_every_tile():
    at = _app()
    _pick(at, "Effusion")
    at.switch_page("pages/explain_page.py").run()
    ranked = _prediction(at).ranked()
    assert at.selectbox(key="target").value == ranked[0]["label"], "the top finding by default"
    rejected = next(r["label"] for r in ranked if not r["positive"])
    at.selectbox(key="target").set_value(rejected).run()
    at.multiselect(key="methods").set_value(["gradcam", "random"]).run()
    marks = [c.value for c in at.caption if "below its operating point" in c.value]
    assert len(marks) == 2, "one mark per tile"
    assert "below its operating point" in _header(at)


def _prediction(at: AppTest):
    return get_engine().predict(at.session_state["case"], "demo")


def test_a_slow_method_runs_on_request_and_the_selection_stays():
    at = _app()
    _pick(at, "Nodule")
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam", "ig"]).run()
    assert not at.exception
    assert set(at.session_state["explanations"]) == {"gradcam"}, "the slow method waits for Compute"
    options = list(at.multiselect(key="methods").options)
    at.button(key="compute-ig").click().run()
    assert not at.exception and not at.error
    key = (at.session_state["case"].sha256, "demo", at.session_state["target"], "ig")
    at.session_state["slow_jobs"][key].job.result(180)  # the map is computed in the background
    at.run()
    assert not at.exception and not at.error
    assert set(at.session_state["explanations"]) == {"gradcam", "ig"}
    at.run()
    at.slider(key="opacity").set_value(0.7).run()
    assert at.multiselect(key="methods").value == ["gradcam", "ig"], "the selection survives the slow method"
    assert list(at.multiselect(key="methods").options) == options, "option ids never change"
    assert "Integrated Gradients" in at.multiselect(key="methods").proto.help
    assert "on this machine" in at.multiselect(key="methods").proto.help, "the measured cost is in the help"


def test_an_empty_map_is_flagged_on_its_tile_with_no_contour(monkeypatch):
    from xai_core import engine as engine_module

    real = engine_module.Engine.explain

    def empty(self, radiograph, model, method, target, **params):
        explanation = real(self, radiograph, model, method, target, **params)
        if method != "random":
            return explanation
        return replace(explanation, map=np.full_like(explanation.map, 0.001))

    monkeypatch.setattr(engine_module.Engine, "explain", empty)
    at = _app()
    _pick(at, "Effusion")
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["random"]).run()
    assert not at.exception
    assert any("This map is empty" in w.value for w in at.warning)
    traces = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert not [t for t in traces if t.get("line", {}).get("color") == "white"], "no top-p% contour on an empty map"
    assert any(t.get("marker", {}).get("showscale") for t in traces), "the tile still has its colour bar"


def test_every_tile_has_a_colour_bar_and_absolute_scaling_is_the_default():
    at = _app()
    _pick(at, "Cardiomegaly")
    at.switch_page("pages/explain_page.py").run()
    assert at.radio(key="range_mode").value == "absolute"
    charts = at.get("plotly_chart")
    assert charts and all('"showscale":true' in c.proto.spec.replace(" ", "") for c in charts)


# ------------------------------------------------------------------------------------------------ W/L

def test_window_level_is_display_only(monochrome1_dicom):
    at = _app()
    at.file_uploader(key="upload").upload("case.dcm", monochrome1_dicom.read_bytes(), "application/dicom").run()
    assert not at.exception and not at.error
    case = at.session_state["case"]
    before = at.session_state["prediction"].probabilities.copy()
    at.segmented_control(key=f"wl-preset-{case.sha256}").set_value("lung").run()
    assert not at.exception
    centre = at.slider(key=f"wc-{case.sha256}").value
    assert centre != pytest.approx(case.meta["window"][0]), "the preset moved the display window"
    at.slider(key=f"ww-{case.sha256}").set_value(50.0).run()
    assert not at.exception and not at.error
    assert at.session_state["case"] is case or at.session_state["case"].meta == case.meta, "the case is untouched"
    np.testing.assert_array_equal(at.session_state["prediction"].probabilities, before)
    assert any("findings still use the file's own window" in c.value for c in at.caption)
    at.button(key=f"wl-reset-{case.sha256}").click().run()
    assert at.slider(key=f"wc-{case.sha256}").value == pytest.approx(case.meta["window"][0])
    assert not any("findings still use the file's own window" in c.value for c in at.caption)


# ------------------------------------------------------------------------------------------------ first screen

def test_the_first_screen_has_the_disclaimer_and_every_page_keeps_it():
    at = _app()
    assert any("not for clinical use" in i.value for i in at.info)
    for page in ("pages/explain_page.py", "pages/refine_page.py", "pages/concepts_page.py", "pages/evaluate_page.py",
                 "pages/review_page.py", "pages/admin_page.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert any("not for clinical use" in i.value for i in at.info), page


def test_no_outside_help_links_and_no_icon_font():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none" and config["client"]["toolbarMode"] == "minimal"
    assert config["client"]["showSidebarNavigation"] is False, "no legacy pages/ navigation before the real one"
    source = (ROOT / "app.py").read_text()
    assert '"Get help": None' in source and '"Report a bug": None' in source
    assert "page_icon=str(ICON)" in source and (ROOT / "ui" / "icon.png").is_file()
    assert "from ui import state" not in source, "app.py imports nothing heavy before the navigation"


# ------------------------------------------------------------------------------------------------ Evaluate

def test_evaluate_with_a_model_without_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path))
    import streamlit as st

    import xai_core.engine as engine_module

    monkeypatch.setattr(engine_module, "_ENGINE", None)
    st.cache_resource.clear()
    try:
        at = _app()
        at.sidebar.selectbox(key="model").set_value("xrv-densenet121-all").run()
        at.switch_page("pages/evaluate_page.py").run()
        assert not at.exception
        assert any("cannot be evaluated here" in e.value and "XAI_WEIGHTS_DIR" in e.value for e in at.error)
        assert "xrv-densenet121-all" in at.sidebar.selectbox(key="model").proto.help, "marked in the picker"
        at.sidebar.selectbox(key="model").set_value("demo").run()
        assert not at.exception and at.button(key="eval_run"), "another model still evaluates"
    finally:
        st.cache_resource.clear()


def _folder(tmp_path, header: list[str], rows: list[list[str]]):
    folder = tmp_path / "site"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes((SAMPLES / "images" / "samples-0-000001.png").read_bytes())
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def test_nih_labels_csv_columns_are_read_and_unknown_ones_say_what_is_expected(tmp_path):
    nih = _folder(tmp_path, ["Image Index", "Finding Labels", "Follow-up #"], [["a.png", "Effusion|Nodule", "0"]])
    [case] = list(folder_cases(nih, 64))
    assert case.labels == ["Effusion", "Nodule"] and case.image.shape == (64, 64)
    (nih / "labels.csv").write_text("file,diagnosis\na.png,Effusion\n")
    with pytest.raises(InputError, match="Image Index"):
        list(folder_cases(nih, 64))


def test_evaluate_says_why_no_case_was_scored(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    folder = _folder(tmp_path, ["image", "labels"], [["a.png", "Fracture"]])  # no finding the demo model has
    monkeypatch.setenv("XAI_EVAL_FOLDERS", str(folder))
    at = _app()
    at.switch_page("pages/evaluate_page.py").run()
    at.selectbox(key="eval_data").set_value("folder:site").run()
    at.multiselect(key="eval_methods").set_value(["random"]).run()
    at.number_input(key="eval_n").set_value(1).run()
    at.button(key="eval_run").click().run()
    assert not at.exception and not at.error
    assert any("0 cases were scored" in w.value and "labels.csv" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------------------ Review

def test_review_shows_the_overlay_and_probability_toasts_and_reopens_a_case():
    at = _app()
    _pick(at, "Nodule")
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    at.switch_page("pages/review_page.py").run()
    assert not at.exception
    captions = [c for image in at.get("image") for c in image.captions]
    assert "original" in captions and "Grad-CAM overlay" in captions
    assert any("probability" in c.value and "operating point" in c.value for c in at.caption)
    at.radio(key="verdict-gradcam").set_value("agree")
    at.button[0].click().run()
    assert not at.exception and any("Saved" in t.value for t in at.toast)
    table = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert list(table["method"]) == ["Grad-CAM"], "published names"
    assert not re.search(r"\d{4}-\d\d-\d\dT|\+00:00", table["time"][0]), "a readable local time, not raw ISO"
    sha = at.session_state["case"].sha256
    at.switch_page("pages/case_page.py").run()
    _pick(at, "Effusion")  # another case becomes current
    at.switch_page("pages/review_page.py").run()
    at.button(key="review_open").click().run()
    assert not at.exception and at.session_state["case"].sha256 == sha, "the worklist reopened the case"
    assert at.multiselect(key="methods"), "on the Explain page"
