"""Generic metric tests driven by the registry: every registered metric gets them for free. Plus the package's own
contracts: the metric list the CSV columns follow, model input from the card, sources, reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

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
