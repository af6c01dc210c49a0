"""Generic metric tests driven by the registry: every registered metric gets them for free. Plus the package's own
contracts: the metric list the CSV columns follow, model input from the card, sources, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import PER_IMAGE
from xai_core.errors import InputError, UnknownNameError
from xai_core.evaluation import (
    ALL_METRICS,
    METRIC_GROUPS,
    REGISTRY,
    EvalCase,
    MapContext,
    compute_metrics,
    get_metric,
    metric_groups,
    register,
    resolve_metrics,
)
from xai_core.evaluation.registry import NEEDS, has_relevance

S = 64
LESION = (slice(20, 34), slice(24, 38))  # 196 px, just under 5% of the image (IoU@5% can reach ~1)
REGION = (slice(14, 42), slice(18, 46))  # the finding's anatomy around the lesion
DISTRACTOR = (slice(46, 62), slice(4, 60))  # texture the model ignores: information that does not raise the score
PATTERN = np.random.default_rng(7).uniform(-1.0, 1.0, (S, S))  # the lesion's texture


def _mask(window: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((S, S), bool)
    mask[window] = True
    return mask


MASK, REGION_MASK = _mask(LESION), _mask(REGION)


def _image() -> np.ndarray:
    """A flat background, a noise-textured lesion (the model below looks only at its texture) and a larger textured
    distractor (information the model ignores, so PIC can tell the maps apart). Flat, since WebP predicts a smooth
    gradient so well that its bokeh images would hold more information than the image."""
    image = np.full((S, S), 0.4)
    image[MASK] = 0.55 + 0.35 * PATTERN[MASK]
    image[DISTRACTOR] = 0.4 + 0.3 * np.random.default_rng(8).uniform(-1.0, 1.0, (S, S))[DISTRACTOR]
    return image.astype(np.float32)


def template_score(images: np.ndarray) -> np.ndarray:
    """A 'model' that predicts the finding from how much of the lesion's texture is intact: pixel images
    [N, S, S] -> probability [N] (0.99 on the image, 0.04 once the texture is gone)."""
    images = np.asarray(images, np.float64)
    intact = (PATTERN[MASK] * (images[:, MASK] - 0.55)).mean(1) / (0.35 * (PATTERN[MASK] ** 2).mean())
    return 1 / (1 + np.exp(-8 * (intact - 0.4)))


FIXATIONS = np.array([[30.0, 26.0, 0.4], [27.0, 23.0, 0.2], [34.0, 30.0, 0.3], [31.0, 31.0, 0.2]], np.float32)


def _maps() -> dict[str, np.ndarray]:
    rows, cols = np.mgrid[:S, :S]
    bump = np.exp(-((rows - 26.5) ** 2 + (cols - 30.5) ** 2) / 40.0)  # breaks ties, centred on the lesion
    perfect = MASK * 1.0 + 0.05 * bump
    return {"perfect": perfect, "random": np.random.default_rng(3).random((S, S)),
            "inverted": perfect.max() - perfect + 1e-3}


MAPS = _maps()


def context(relevance: np.ndarray, **overrides) -> MapContext:
    """A full context (every need met) for one map of the synthetic world; `overrides` replace fields."""
    fields = {"relevance": np.asarray(relevance, np.float32), "image": _image(), "mask": MASK,
              "score": template_score, "decision_threshold": 0.5, "fixations": FIXATIONS, "region": REGION_MASK,
              "gaze_sigma": 3.0, **overrides}
    return MapContext(**fields)


METRICS = sorted(REGISTRY)
WITHOUT = {"mask": {"mask": None}, "model": {"score": None}, "fixations": {"fixations": None},
           "region": {"region": None}}


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    """Every metric of each of the three maps, one context per map (shared work computed once per map)."""
    out = {}
    for kind, relevance in MAPS.items():
        ctx = context(relevance)
        out[kind] = {name: REGISTRY[name](ctx) for name in METRICS}
    return out


def test_registry_metadata_is_complete_and_consistent():
    assert len(REGISTRY) == len(set(REGISTRY))
    for name, metric in REGISTRY.items():
        assert metric.name == name and metric.direction in ("higher", "lower")
        assert metric.needs <= set(NEEDS) and metric.description
        low, high = metric.bounds
        assert low < high
        assert name in METRIC_GROUPS[metric.group]
    assert metric_groups() == METRIC_GROUPS and tuple(REGISTRY) == ALL_METRICS
    assert sorted(m for group in METRIC_GROUPS.values() for m in group) == sorted(ALL_METRICS)


def test_the_metric_list_keeps_the_cli_contract():
    """per_image.csv's columns and `--metrics` groups follow this order: changing it changes output files."""
    assert ALL_METRICS == ("relevance_mass", "relevance_rank", "pointing_game", "iou_at_5", "auitc", "complexity",
                           "sparseness", "deletion_auc", "insertion_auc", "faithfulness_corr", "sic_auc", "aic_auc",
                           "segx_iou_at_5", "gaze_kl", "gaze_nss", "gaze_cc", "gaze_sim")
    assert list(METRIC_GROUPS) == ["localisation", "shape", "faithfulness", "pic", "segx", "gaze"]
    assert resolve_metrics("all") == list(ALL_METRICS)
    assert resolve_metrics("gaze, relevance_mass,gaze_kl") == [*METRIC_GROUPS["gaze"], "relevance_mass"]
    with pytest.raises(UnknownNameError, match="unknown metric 'nope'"):
        resolve_metrics("shape,nope")
    with pytest.raises(UnknownNameError, match="unknown metric"):
        get_metric("nope")


def test_registering_checks_names_directions_and_needs():
    with pytest.raises(ValueError, match="already registered"):
        register("relevance_mass", "localisation", "higher")
    with pytest.raises(ValueError, match="direction"):
        register("new_metric", "shape", "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown needs"):
        register("new_metric", "shape", "higher", needs=("labels",))
    assert "new_metric" not in REGISTRY


@pytest.mark.parametrize("kind", list(MAPS))
@pytest.mark.parametrize("name", METRICS)
def test_every_metric_gives_one_float_within_its_bounds(name, kind, scores):
    value = scores[kind][name]
    low, high = REGISTRY[name].bounds
    assert type(value) is float and math.isfinite(value), f"{name} of the {kind} map: {value}"
    assert low - 1e-3 <= value <= high + 1e-3  # KL's epsilon lets it dip a hair below 0


@pytest.mark.parametrize("name", METRICS)
def test_every_metric_is_nan_for_an_empty_map(name):
    for empty in (np.zeros((S, S), np.float32), np.full((S, S), np.nan, np.float32)):
        assert not has_relevance(empty)
        assert math.isnan(REGISTRY[name](context(empty)))


@pytest.mark.parametrize("name", METRICS)
def test_every_metric_is_nan_without_what_it_needs(name):
    metric = REGISTRY[name]
    for need, missing in WITHOUT.items():
        ctx = context(MAPS["perfect"], **missing)
        value = metric(ctx)
        if need in metric.needs:
            assert math.isnan(value) and not metric.applicable(ctx)
            assert name not in compute_metrics([name], ctx), "the runner leaves the cell empty"
        else:
            assert math.isfinite(value) and metric.applicable(ctx)


EMPTY_NEEDS = {"mask": {"mask": np.zeros((S, S), bool)}, "region": {"region": np.zeros((S, S), bool)},
               "fixations": {"fixations": np.array([[-5.0, -5.0, 1.0], [S + 3.0, 10.0, 1.0]], np.float32)}}


@pytest.mark.parametrize("name", [n for n in METRICS if REGISTRY[n].needs & set(EMPTY_NEEDS)])
def test_every_metric_is_nan_when_its_ground_truth_is_empty(name):
    """An empty lesion mask or region, or fixations that all fall off the image: undefined, never a score."""
    for need in REGISTRY[name].needs & set(EMPTY_NEEDS):
        assert math.isnan(REGISTRY[name](context(MAPS["perfect"], **EMPTY_NEEDS[need]))), need


@pytest.mark.parametrize("control", ["random", "inverted"])
@pytest.mark.parametrize("name", METRICS)
def test_a_perfect_map_beats_random_and_inverted_maps_in_the_declared_direction(name, control, scores):
    """The perfect map is the lesion (where the model looks, the reader fixates and the anatomy lies), as a compact
    blob; `random` is uniform noise, `inverted` puts the relevance everywhere but the lesion."""
    metric = REGISTRY[name]
    perfect, other = scores["perfect"][name], scores[control][name]
    assert metric.better(perfect, other), f"{name} ({metric.direction} is better): perfect {perfect} vs " \
                                          f"{control} {other}"


def test_shared_work_is_done_once_per_map_and_curves_are_kept():
    calls = []

    def counting(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return template_score(images)

    ctx = context(MAPS["perfect"], score=counting)
    values = compute_metrics(["deletion_auc", "insertion_auc", "sic_auc", "aic_auc"], ctx)
    once = len(calls)
    assert set(values) == {"deletion_auc", "insertion_auc", "sic_auc", "aic_auc"}
    assert REGISTRY["deletion_auc"](ctx) == values["deletion_auc"] and len(calls) == once, "no new model calls"
    assert set(ctx.curves) == {"sic", "aic"} and all(len(c) == 101 for c in ctx.curves.values())
    assert ctx.curves["sic"][0] == 0.0 and ctx.curves["sic"][-1] == 1.0


class _ThreeChannel(nn.Module):
    """Logits of 2 labels from inputs [B, 3, S, S]; remembers the inputs it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.min()) < 0 or float(x.max()) > 1:  # also keeps torch.fx from tracing (folding) this module
            raise ValueError("input outside [0, 1]")
        self.seen.append(x.detach().clone())
        mean = x.mean((1, 2, 3)) * self.scale
        return torch.stack([mean - 0.5, 0.5 - mean], 1)


def test_evaluation_feeds_the_model_what_its_card_asks_for(monkeypatch):
    """No hard-coded demo input: a 3-channel card with a [0, 1] range gets 3 channels in [0, 1]."""
    from xai_core.evaluation import evaluate_case
    from xai_core.models import InputSpec, ModelCard, ModelHandle

    monkeypatch.setenv("XAI_NO_ONNX", "1")  # the module records its inputs: keep it on PyTorch
    card = ModelCard("three-channel", ["Mass", "Nodule"], InputSpec(3, S, (0.0, 1.0)), "", "", {"Mass": 0.5}, {},
                     "test")
    module = _ThreeChannel().eval()
    handle = ModelHandle(card, module, torch.device("cpu"))
    case = EvalCase("c0", _image(), ["Mass"], {"Mass": MASK})
    rows = evaluate_case(handle, case, ["random"], ["relevance_mass", "deletion_auc", "complexity"],
                         precision="float32")
    assert [(r["finding"], r["method"]) for r in rows] == [("Mass", "random")]
    assert all(isinstance(rows[0][m], float) for m in ("relevance_mass", "deletion_auc", "complexity"))
    assert module.seen and all(x.shape[1:] == (3, S, S) for x in module.seen)
    pixels = torch.cat(module.seen)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert torch.allclose(module.seen[0][0, 0], torch.from_numpy(_image())), "the original image, unscaled"


def test_folder_cases_crop_masks_boxes_and_fixations_to_the_model_grid(tmp_path):
    import cv2

    from xai_core.evaluation import cases_from

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "fixations").mkdir()
    image = np.zeros((100, 140), np.uint8)  # 20 px cropped off each side
    image[40:60, 60:80] = 255
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "a_Mass.png"), (image > 0).astype(np.uint8) * 255)
    (tmp_path / "labels.csv").write_text("image,labels\na.png,Mass|Nodule\nmissing.png,No Finding\n")
    (tmp_path / "bboxes.csv").write_text("Image Index,Finding Label,x,y,w,h\na.png,Nodule,20,0,10,10\n")
    (tmp_path / "fixations" / "a.csv").write_text("DICOM_ID,X_ORIGINAL,Y_ORIGINAL\na,70,50\n")
    cases = list(cases_from(str(tmp_path), 5, 0, 50))
    assert len(cases) == 1, "rows without an image are skipped"
    case = cases[0]
    assert case.case_id == "a" and case.labels == ["Mass", "Nodule"] and case.image.shape == (50, 50)
    assert case.masks["Mass"].sum() == 100 and case.masks["Mass"][20:30, 20:30].all()
    assert case.masks["Nodule"][:5, :5].all() and case.masks["Nodule"].sum() == 25
    np.testing.assert_allclose(case.fixations, [[25.0, 25.0, 1.0]])
    with pytest.raises(InputError, match="phantom split"):
        cases_from("phantom:nowhere", 1, 0, 50)
    with pytest.raises(InputError, match=r"labels\.csv"):
        cases_from(str(tmp_path / "images"), 1, 0, 50)


def test_one_figure_per_plot_written_as_html_and_png(tmp_path):
    from PIL import Image

    from xai_core.evaluation.reports import box_figure, write_plots

    table = tmp_path / "per_image.csv"
    rng = np.random.default_rng(0)
    lines = ["case_id,finding,method,seconds,relevance_mass,complexity,gaze_kl"]
    lines += [f"c{i},Mass,{m},0.1,{rng.random():.3f},{rng.random() * 5:.3f}," for i in range(6)
              for m in ("gradcam", "random")]
    table.write_text("\n".join(lines) + "\n")
    write_plots(table, ["gradcam", "random"], ["relevance_mass", "complexity", "gaze_kl"], tmp_path)
    assert "relevance_mass" in (tmp_path / "metrics.html").read_text()
    with Image.open(tmp_path / "metrics.png") as png:
        assert png.size[0] > 600 and png.size[1] >= 320 and len(png.getcolors(1 << 16) or []) > 20
    import pandas as pd

    figure = box_figure(pd.read_csv(table), ["gradcam", "random"], ["relevance_mass", "complexity", "gaze_kl"])
    assert [a.text for a in figure.layout.annotations] == ["relevance_mass", "complexity"], "empty metrics skipped"
    colours = {t.name: t.marker.color for t in figure.data}
    assert len(set(colours.values())) == 2, "one colour per method, the same in every panel"


def test_median_curve_interval_is_reproducible_and_degenerate_inputs_are_handled(tmp_path):
    from xai_core.evaluation.reports import median_curves

    x = np.linspace(0, 1, 101)
    curve_file = tmp_path / "pic_curves.jsonl"
    records = [{"case_id": f"c{i}", "finding": "Mass", "method": "ig", "kind": "aic", "y": list(x ** (1 + i / 4))}
               for i in range(8)]
    records.append({"case_id": "solo", "finding": "Mass", "method": "random", "kind": "sic", "y": list(x)})
    curve_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, again = median_curves(curve_file, ["ig", "random"]), median_curves(curve_file, ["ig", "random"])
    assert first == again
    aic = first["ig"]["aic"]
    assert aic["n"] == 8 and aic["ci_low"] < aic["median_curve_auc"] < aic["ci_high"]
    solo = first["random"]["sic"]
    assert solo["n"] == 1 and solo["ci_low"] == solo["median_curve_auc"] == solo["ci_high"] == pytest.approx(0.5)


def test_one_bootstrap_helper_handles_undefined_resamples():
    from xai_core.metrics.stats import bootstrap_ci, bootstrap_interval

    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    assert bootstrap_ci(np.array([0.3, np.nan])) == (0.3, 0.3)
    labels = np.array([True, False, True, False, True, True])
    values = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2])

    def separation(v: np.ndarray, y: np.ndarray) -> float:  # undefined when a resample holds one class only
        return float(v[y].mean() - v[~y].mean()) if y.any() and not y.all() else float("nan")

    low, high = bootstrap_interval((values, labels), separation, paired=True, n_boot=500)
    assert math.isfinite(low) and low < separation(values, labels) < high
    never = bootstrap_interval((values, labels), lambda v, y: float("nan"), paired=True, n_boot=50)
    assert all(math.isnan(v) for v in never)


def test_pic_outcome_names_the_skip_rule_that_dropped_a_map():
    import pickle

    from xai_core.metrics.pic import SKIP_RULES, PicSkip

    kept = context(MAPS["perfect"])
    compute_metrics(["sic_auc", "aic_auc"], kept)
    assert kept.pic_outcome("sic") == kept.pic_outcome("aic") == "kept"
    low = context(MAPS["perfect"], score=lambda images: np.full(len(images), 0.2))
    assert math.isnan(compute_metrics(["sic_auc", "aic_auc"], low)["sic_auc"])
    assert low.pic_outcome("sic") == low.pic_outcome("aic") == "low_score"
    flat = context(MAPS["perfect"], score=lambda images: np.full(len(images), 0.9))
    compute_metrics(["sic_auc"], flat)
    assert flat.pic_outcome("sic") == "blurred_as_high"
    empty = context(np.zeros((S, S), np.float32))
    assert math.isnan(compute_metrics(["sic_auc"], empty)["sic_auc"]) and empty.pic_outcome("sic") == "empty_map"
    assert context(MAPS["perfect"]).pic_outcome("sic") == "", "no curve asked for"
    skip = pickle.loads(pickle.dumps(PicSkip("original score 0.200 < 0.5", "low_score")))
    assert skip.rule == "low_score" and str(skip) == "original score 0.200 < 0.5"
    assert set(SKIP_RULES) == {"low_score", "blurred_as_high", "no_information"}


def test_evaluate_case_rows_say_what_became_of_each_pic_curve(monkeypatch):
    from xai_core.evaluation.runner import evaluate_case, table_columns
    from xai_core.models import InputSpec, ModelCard, ModelHandle

    monkeypatch.setenv("XAI_NO_ONNX", "1")
    card = ModelCard("three-channel", ["Mass", "Nodule"], InputSpec(3, S, (0.0, 1.0)), "", "", {"Mass": 0.5}, {},
                     "test")
    handle = ModelHandle(card, _ThreeChannel().eval(), torch.device("cpu"))
    case = EvalCase("c0", _image(), ["Mass"], {"Mass": MASK})
    metrics = ["complexity", "sic_auc", "aic_auc"]
    rows = evaluate_case(handle, case, ["random"], metrics, precision="float32")
    # Mass: sigmoid(mean pixel - 0.5) < 0.5 on this image, so both curves are dropped by the score rule
    assert rows[0]["sic_skip"] == rows[0]["aic_skip"] == "low_score" and math.isnan(rows[0]["sic_auc"])
    assert table_columns(metrics) == ["case_id", "finding", "method", "seconds", *metrics, "sic_skip", "aic_skip"]
    assert table_columns(["complexity"]) == ["case_id", "finding", "method", "seconds", "complexity"]


def test_summary_per_finding_marks_invalid_pairs_counts_pic_coverage_and_is_strict_json(
        tmp_path, flat_reads_effusion_check):
    from xai_core.evaluation import method_summaries, print_by_finding, print_pic_coverage, summary_document
    from xai_core.files import strict_json
    from xai_core.metrics.stats import summarise

    table = tmp_path / "per_image.csv"
    table.write_text(PER_IMAGE)
    metrics = ["deletion_auc", "complexity", "sic_auc"]
    check = flat_reads_effusion_check(metrics)
    assert check["invalid"] == {"deletion_auc": ["Effusion"]}
    document = summary_document(table, ["gradcam", "random"], metrics, check)
    assert set(method_summaries(document)) == {"gradcam", "random"}
    pooled = document["gradcam"]["deletion_auc"]
    assert pooled["n"] == 2 and pooled["mean"] == pytest.approx(0.3) and pooled["n_invalid"] == 2
    by_finding = document["by_finding"]
    effusion = by_finding["gradcam"]["Effusion"]["deletion_auc"]
    assert effusion["invalid"] and effusion["mean"] == pytest.approx(0.8) and effusion["n"] == 2, \
        "an invalid pair keeps its value, marked"
    assert "deletion_auc leaves out Effusion: the removed image reads as Effusion (p = 0.99" in \
        effusion["invalid_reason"]
    assert "invalid" not in by_finding["gradcam"]["Mass"]["deletion_auc"]
    assert "invalid" not in by_finding["gradcam"]["Effusion"]["complexity"], "only the removal metrics"
    assert by_finding["gradcam"]["Effusion"]["complexity"] == summarise(np.array([5.0, 5.2])), "the same summarise"
    coverage = document["pic_coverage"]
    assert set(coverage) == {"rules", "sic"} and "empty_map" in coverage["rules"]
    assert coverage["sic"]["by_finding"] == {
        "Effusion": {"positives": 2, "kept": 1, "low_score": 0, "blurred_as_high": 1, "no_information": 0,
                     "empty_map": 0},
        "Mass": {"positives": 2, "kept": 1, "low_score": 1, "blurred_as_high": 0, "no_information": 0,
                 "empty_map": 0}}
    assert coverage["sic"]["pooled"]["positives"] == 4 and coverage["sic"]["pooled"]["kept"] == 2

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in strict JSON")

    stored = json.loads(strict_json(document), parse_constant=no_constants)
    assert stored["by_finding"]["random"]["Effusion"]["sic_auc"] == {"mean": None, "ci_low": None, "ci_high": None,
                                                                    "n": 0}
    text = print_by_finding(stored["by_finding"], metrics)
    effusion_row = next(line for line in text.splitlines() if line.startswith("gradcam") and "Effusion" in line)
    mass_row = next(line for line in text.splitlines() if line.startswith("gradcam") and "Mass" in line)
    assert "0.800 (2)!" in effusion_row and "!" not in mass_row and "n/a" in text
    assert f"! {effusion['invalid_reason']}" in text
    coverage_text = print_pic_coverage(stored["pic_coverage"])
    assert any(line.split() == ["Mass", "2", "1", "1", "0", "0", "0"] for line in coverage_text.splitlines())


def test_a_table_from_an_earlier_version_is_refused_not_mixed_and_other_metrics_need_another_folder(tmp_path):
    from xai_core.evaluation import run_evaluation

    out = tmp_path / "eval"
    out.mkdir()
    header = "case_id,finding,method,seconds,complexity,sic_auc"  # before the PIC outcome columns and settings
    (out / "per_image.csv").write_text(header + "\n")
    with pytest.raises(InputError, match="did not record its settings"):
        run_evaluation("demo", "phantom:test", 1, ["gradcam"], ["complexity", "sic_auc"], out, progress=False,
                       device="cpu")
    assert (out / "per_image.csv").read_text() == header + "\n", "nothing is appended to it"
    fresh = tmp_path / "fresh"
    run_evaluation("demo", "phantom:test", 1, ["gradcam"], ["complexity"], fresh, progress=False, device="cpu")
    with pytest.raises(InputError, match="other metrics"):
        run_evaluation("demo", "phantom:test", 1, ["gradcam"], ["complexity", "sic_auc"], fresh, progress=False,
                       device="cpu")


def test_a_results_folder_resumes_only_with_the_settings_its_rows_were_computed_with(tmp_path):
    from xai_core.evaluation import SETTINGS_FILE, run_evaluation

    def run(**options):
        return run_evaluation("demo", "phantom:test", 1, ["random"], ["relevance_mass"], tmp_path / "out",
                              device="cpu", progress=False, baseline_check_n=0, **options)

    run(removal="blur")
    settings = json.loads((tmp_path / "out" / SETTINGS_FILE).read_text())
    assert settings["removal"].startswith("blur") and settings["model"] == "demo" and settings["weights"]
    run(removal="blur")  # same settings: resumes
    with pytest.raises(InputError, match=r"other settings.*removal"):
        run(removal="road")
    (tmp_path / "out" / SETTINGS_FILE).unlink()  # a folder from before settings were recorded
    with pytest.raises(InputError, match="did not record its settings"):
        run(removal="blur")
