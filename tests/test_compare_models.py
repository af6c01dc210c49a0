"""The Explain page's model comparison (issue 26, item 5), through AppTest on the bundled demo model and a second
classifier with weights of its own in a temporary models folder (never committed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.test_app import SHIPPED_ADDRESS, bind_with_own_engine
from xai_core import engine as engine_module
from xai_core.engine import get_engine
from xai_core.models import bundled, get_card, registry

# the only classifier weights the tests see (besides the demo-shortcut file they write): whatever other classifiers
# are bundled or being trained, the comparison's choices stay the same
CLASSIFIER_WEIGHTS = ("demo.pt",)


@pytest.fixture(autouse=True)
def models_dir(monkeypatch, tmp_path) -> Iterator[None]:
    """The app as shipped, on a models folder of the test's own: the bundled files (linked), `demo-shortcut` with
    weights of its own (demo's, the head's biases lowered, so its probabilities differ) and no weights for
    `demo-mimic` / `demo-shortcut-mimic`, whatever a training job writes to assets/models/ meanwhile; no
    torchxrayvision weights; a fresh engine."""
    for name in ("XAI_USERS_FILE", "XAI_OIDC_DOMAINS", "XAI_EVAL_FOLDERS", "XAI_ALLOW_RANDOM_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path / "none"))
    folder = tmp_path / "models"
    folder.mkdir()
    classifiers = {entry.get("file", f"{name}.pt") for name, entry in bundled.manifest_entries().items()
                   if entry.get("family") == "classifier"}
    for path in bundled.MODELS_DIR.glob("*.pt"):
        if path.name in CLASSIFIER_WEIGHTS or path.name not in classifiers:
            (folder / path.name).symlink_to(path)
    state = torch.load(bundled.MODELS_DIR / "demo.pt", map_location="cpu", weights_only=True)
    state["classifier.bias"] = state["classifier.bias"] - 8.0
    torch.save(state, folder / "demo-shortcut.pt")
    demo = get_card("demo")  # the same architecture as the file above, whatever the manifest says meanwhile
    card = replace(demo, name="demo-shortcut", weights_file="demo-shortcut.pt",
                   provenance={**demo.provenance, "weights_sha256": None})
    monkeypatch.setitem(registry._REGISTRY, "demo-shortcut", replace(registry._REGISTRY["demo-shortcut"], card=card))
    monkeypatch.setattr(bundled, "MODELS_DIR", folder)
    yield from bind_with_own_engine(monkeypatch, SHIPPED_ADDRESS)


def _explain_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    title = next(s for s in at.selectbox(key="sample").options if "phantom" in s and "Effusion" in s)
    at.selectbox(key="sample").set_value(title).run()
    at.switch_page("pages/explain_page.py").run()
    at.selectbox(key="target").set_value("Effusion").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    assert not at.exception and not at.error
    return at


def _tiles(at: AppTest) -> dict[str, object]:
    """Comparison tiles by model name (a column whose first line is the bold model name)."""
    tiles = {}
    for column in at.columns:
        names = [m.value.strip("*") for m in column.markdown if m.value.startswith("**") and m.value.endswith("**")]
        if names:
            tiles[names[0]] = column
    return tiles


def _compare_charts(at: AppTest) -> list:
    return [c for c in at.get("plotly_chart") if "compare-overlay-" in c.proto.id]


def test_the_comparison_is_off_by_default_and_the_page_is_unchanged():
    at = _explain_page()
    assert at.toggle(key="compare").value is False
    assert not [w for w in at.multiselect if w.key == "compare_models"], "no model picker"
    assert len(at.get("plotly_chart")) == 1 and not _compare_charts(at), "only the chosen method's tile"
    assert not _tiles(at)
    assert [b.label for b in at.get("download_button")].count("Overlay PNG") == 1
    assert get_engine().loaded_models() == ["demo"], "no other model is loaded for a comparison not asked for"


def test_two_models_give_two_tiles_each_with_its_name_and_probability():
    at = _explain_page()
    at.toggle(key="compare").set_value(True).run()
    assert not at.exception and not at.error
    picker = at.multiselect(key="compare_models")
    assert picker.options == ["demo", "demo-shortcut"], "only models with trained weights here are offered"
    assert picker.value == ["demo", "demo-shortcut"] and picker.proto.max_selections == 3
    assert "demo-mimic" in picker.proto.help and "to rebuild them run" in picker.proto.help, "why not offered"
    assert any("Not offered" in c.value and "demo-mimic" in c.value and "demo-shortcut-mimic" in c.value
               for c in at.caption)
    case = at.session_state["case"]
    tiles = _tiles(at)
    assert set(tiles) == {"demo", "demo-shortcut"}
    probabilities = {}
    for name, tile in tiles.items():
        finding = get_engine().predict(case, name).finding(get_card(name).labels.index("Effusion"))
        probabilities[name] = finding["probability"]
        verdict = "above" if finding["positive"] else "below"
        lines = [m.value for m in tile.markdown]
        assert any(line.startswith(f"Effusion p = {finding['probability']:.2f} · {verdict} its operating point "
                                   f"({finding['threshold']:.2f})") and "Grad-CAM" in line for line in lines), lines
        assert len(tile.get("plotly_chart")) == 1, f"{name}: its overlay"
    assert f"{probabilities['demo']:.2f}" != f"{probabilities['demo-shortcut']:.2f}", "each model's own probability"
    assert {c.proto.id.rpartition("compare-overlay-")[2] for c in _compare_charts(at)} == {"demo", "demo-shortcut"}
    assert any("normalised to its own range (0 to its own maximum)" in c.value and "shape" in c.value
               for c in at.caption), "the caption says the colours compare shape, not strength"
    assert len(at.get("plotly_chart")) == 3, "the method grid is still there"

    at.selectbox(key="compare_method").set_value("random").run()
    assert not at.exception and not at.error
    assert any("same fixed 0-1 colour scale" in c.value for c in at.caption), "absolute maps share one scale"
    at.multiselect(key="compare_models").set_value(["demo-shortcut"]).run()
    assert set(_tiles(at)) == {"demo-shortcut"} and len(_compare_charts(at)) == 1


def test_a_model_without_weights_or_failing_says_so_in_its_own_tile(monkeypatch):
    real = engine_module.Engine.explain

    def failing(self, radiograph, model, method, target, **params):
        if model == "demo-shortcut":
            raise RuntimeError("the GPU went away")
        return real(self, radiograph, model, method, target, **params)

    at = _explain_page()
    at.session_state["compare"] = True
    at.session_state["compare_models"] = ["demo-shortcut", "demo-mimic"]
    at.run()
    assert not at.exception
    tiles = _tiles(at)
    assert set(tiles) == {"demo-shortcut", "demo-mimic"}
    [message] = tiles["demo-mimic"].error
    assert "demo-mimic" in message.value and "missing" in message.value and "to rebuild them run" in message.value
    assert not tiles["demo-mimic"].get("plotly_chart")
    assert len(tiles["demo-shortcut"].get("plotly_chart")) == 1 and not tiles["demo-shortcut"].error

    monkeypatch.setattr(engine_module.Engine, "explain", failing)
    at.multiselect(key="compare_models").set_value(["demo", "demo-shortcut"]).run()
    assert not at.exception
    tiles = _tiles(at)
    assert any("demo-shortcut could not explain Effusion" in e.value and "the GPU went away" in e.value
               for e in tiles["demo-shortcut"].error)
    assert len(tiles["demo"].get("plotly_chart")) == 1 and not tiles["demo"].error, "the other tile is unaffected"


def test_at_most_three_models_are_compared():
    at = _explain_page()
    at.session_state["compare"] = True
    at.session_state["compare_models"] = ["demo", "demo-shortcut", "demo-mimic", "demo-shortcut-mimic"]
    at.run()
    assert not at.exception
    assert any("At most 3 models" in w.value for w in at.warning)
    assert at.multiselect(key="compare_models").value == ["demo", "demo-shortcut", "demo-mimic"]
    assert set(_tiles(at)) == {"demo", "demo-shortcut", "demo-mimic"}
