"""Explanation-guided training (MIMIC): the differentiable Grad-CAM, the gradient paths, the recipe, a tiny run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from xai_core.errors import InputError
from xai_core.explainers import get_explainer
from xai_core.explainers.base import upsample
from xai_core.models import bundled, load_model
from xai_core.models.densenet import build_demo_densenet
from xai_core.phantom import FINDINGS, generate_case
from xai_core.training import mimic
from xai_core.training.common import to_model_input

TINY = {"growth_rate": 4, "block_config": [1, 1, 1, 1], "num_init_features": 8}


def _batch(n: int = 3, size: int = 96) -> torch.Tensor:
    cases = [generate_case("train", i, seed=5, size=size) for i in range(n)]
    return torch.from_numpy(np.stack([to_model_input(c.image) for c in cases]))[:, None]


def test_training_gradcam_is_the_products_gradcam():
    handle = load_model("demo", "cpu")
    x = _batch(2, size=224)
    targets = torch.tensor([FINDINGS.index("Effusion"), FINDINGS.index("Nodule")])
    trainable = copy.deepcopy(handle.module).requires_grad_(True)  # bundled models load frozen
    logits, cam = mimic.differentiable_cam(trainable, x, targets)
    product = get_explainer("gradcam").explain(handle, x, targets)
    torch.testing.assert_close(upsample(cam.detach(), x.shape[-2:]).clamp_min(0), product, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits.detach(), handle.module(x).detach(), rtol=1e-5, atol=1e-5)


def test_hirescam_map_is_the_logits_share_per_position():
    torch.manual_seed(0)
    model = build_demo_densenet(len(FINDINGS), **TINY)
    with torch.no_grad():
        model.classifier.weight.abs_()  # every position's share positive, so the map's ReLU keeps them all
    x = _batch(2)
    targets = torch.tensor([0, 3])
    logits, cam = mimic.differentiable_cam(model, x, targets, "hirescam")
    bias = model.classifier.bias[model.outputs[targets]]
    torch.testing.assert_close(cam.sum((1, 2)), logits.gather(1, targets[:, None])[:, 0] - bias, rtol=1e-4, atol=1e-5)
    _, gradcam = mimic.differentiable_cam(model, x, targets, "gradcam")
    assert not torch.allclose(gradcam, cam), "Grad-CAM weighs channels by their averaged gradient instead"
    with pytest.raises(InputError, match="training explanation"):
        mimic.differentiable_cam(model, x, targets, "xrai")
    with pytest.raises(InputError, match="training explanation"):
        mimic.MimicRecipe(explanation="xrai").checked()


def test_gaze_term_reaches_every_part_of_the_classifier():
    torch.manual_seed(0)
    model = build_demo_densenet(len(FINDINGS), **TINY)
    x = _batch(2)
    _, cam = mimic.differentiable_cam(model, x, torch.tensor([0, 1]))
    gaze = torch.rand(2, *cam.shape[1:])
    gaze = gaze / gaze.sum((1, 2), keepdim=True)
    mimic.gaze_kl(gaze, cam).mean().backward()
    assert model.classifier.weight.grad.abs().sum() > 0  # through the Grad-CAM weights (double backprop)
    assert model.features.conv0.weight.grad.abs().sum() > 0  # through the activations


def test_gaze_kl_is_zero_for_a_map_equal_to_the_gaze_and_positive_otherwise():
    gaze = torch.rand(1, 8, 8)
    gaze = gaze / gaze.sum()
    assert float(mimic.gaze_kl(gaze, gaze * 5)) == pytest.approx(0.0, abs=1e-5)
    assert float(mimic.gaze_kl(gaze, torch.rand(1, 8, 8))) > 0


def test_discriminator_term_is_reversed_for_the_maps_only():
    torch.manual_seed(0)
    disc = mimic.Discriminator(16, 2, hidden=8)
    maps = torch.rand(4, 16, requires_grad=True)
    who = torch.tensor([0, 0, 1, 1])
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(disc(maps), who), maps)[0]
    reversed_ = torch.autograd.grad(torch.nn.functional.cross_entropy(disc(maps, reverse=0.5), who), maps)[0]
    torch.testing.assert_close(reversed_, -0.5 * plain)
    loss = torch.nn.functional.cross_entropy(disc(maps, reverse=0.5), who)
    loss.backward()
    assert disc.net[0].weight.grad.abs().sum() > 0  # the discriminator still learns to tell them apart


def test_normalised_maps_span_zero_to_one():
    flat = mimic.normalised(torch.rand(3, 5, 5) * 7 + 2)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(3))
    torch.testing.assert_close(flat.max(1).values, torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes", [{"variant": "nope"}, {"variant": "discriminator", "members": 1},
                                     {"variant": "gaze", "members": 2}, {"steps": 0}, {"beta": -1.0},
                                     {"variant": "discriminator", "members": 2, "explanation": "occlusion"},
                                     {"variant": "control", "explanation": "occlusion"}])
def test_inconsistent_recipes_are_refused(changes):
    with pytest.raises(InputError):
        mimic.MimicRecipe(**changes).checked()


def test_gaze_transform_adds_a_normalised_heatmap_and_a_positive_target():
    transform = mimic.GazeTransform(map_size=28, kernel="mimic", seed=0)
    for index in range(12):
        case = generate_case("train", index, seed=3, size=96)
        item = transform(case, {"x": torch.zeros(1, 96, 96)}, "train", index)
        assert item["gaze"].shape == (28, 28)
        assert float(item["gaze"].sum()) == pytest.approx(1.0, abs=1e-5)
        assert item["has_target"] == bool(case.labels)
        if case.labels:
            assert FINDINGS[item["target"]] in case.labels
        again = transform(case, {"x": torch.zeros(1, 96, 96)}, "train", index)
        assert again["target"] == item["target"]


class _PatchModel(torch.nn.Module):
    """Two logits: the mean of the top-left 4 x 4 patch times 2, and the whole image's mean times 3 (per 1000)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([2 * x[:, 0, :4, :4].mean((1, 2)), 3 * x[:, 0].mean((1, 2))], 1) / 1000


def test_off_path_occlusion_counts_only_the_evidence_off_the_path():
    x = torch.full((3, 1, 8, 8), -500.0)
    x[:, 0, :4, :4] = 900.0  # a bright patch, read by the first logit
    off_path = torch.zeros(3, 1, 8, 8)
    off_path[1, 0, :4, :4] = 1  # removes the patch
    off_path[2, 0, 6:, :] = 1  # removes two rows of background the imputation restores
    _, change = mimic.off_path_occlusion(_PatchModel(), x, off_path, seed=0)
    assert float(change[0]) == 0.0  # nothing removed
    # the patch imputed from its surroundings (-500): logits 1.8 -> -1.0 and -0.45 -> -1.5, so probabilities
    # 0.858 -> 0.269 and 0.389 -> 0.182: mean squared change 0.195 (ROAD's noise moves it a little)
    assert float(change[1]) == pytest.approx(0.195, abs=0.01)
    assert float(change[2]) < 1e-4  # background imputed as background


def test_gaze_transform_marks_the_film_off_the_readers_path(monkeypatch):
    transform = mimic.GazeTransform(map_size=28, kernel="mimic", seed=0, path_radius=2.0)
    case = generate_case("train", 0, seed=3, size=96, shortcut=0.9)
    item = transform(case, {"x": torch.zeros(1, 96, 96)}, "train", 0)
    off_path = item["off_path"][0].bool()
    fixations = np.asarray(case.fixations, np.float64)
    x, y = fixations[:, 2].astype(int), fixations[:, 3].astype(int)
    assert not off_path[y, x].any()  # every fixation is on the path
    assert off_path[0, 0] and off_path[-1, -1]  # the film's corners, where the reader never looks
    assert 0.2 < float(off_path.float().mean()) < 0.9
    assert "off_path" not in mimic.GazeTransform(28, "mimic", 0)(case, {"x": torch.zeros(1, 96, 96)}, "train", 0)
    monkeypatch.setattr(mimic, "reader_path", lambda points, shape, radius: np.zeros(shape, bool))  # no fixation
    item = transform(case, {"x": torch.zeros(1, 96, 96)}, "train", 0)  # on the film: reader_path says so
    assert not item["off_path"].any(), "without a path, nothing is off it"


def test_the_occlusion_term_acts_on_every_film_and_reaches_the_weights():
    torch.manual_seed(0)
    model = build_demo_densenet(len(FINDINGS), **TINY)
    ensemble = mimic.MimicEnsemble([model], None)
    off_path = torch.zeros(2, 1, 96, 96)
    off_path[:, :, :, 48:] = 1
    batch = {"x": _batch(2), "y": torch.zeros(2, len(FINDINGS)), "target": torch.tensor([0, 1]),
             "has_target": torch.tensor([False, False]), "off_path": off_path}  # normal films count too
    recipe = mimic.MimicRecipe(explanation="occlusion", base=None, architecture=TINY).checked()
    loss, parts = mimic.mimic_loss(ensemble, batch, recipe, 0, torch.device("cpu"))
    assert parts["off_path"] > 0
    torch.testing.assert_close(loss.detach(), torch.tensor(parts["bce"] + recipe.beta * parts["off_path"]))
    _, change = mimic.off_path_occlusion(model, batch["x"], off_path, seed=0)
    change.mean().backward()  # the term alone reaches the first layer, through both passes
    assert model.features.conv0.weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="path_radius"):
        mimic.MimicRecipe(explanation="occlusion", path_radius=0).checked()


@pytest.mark.parametrize("variant,members,explanation", [("gaze", 1, "gradcam"), ("discriminator", 2, "gradcam"),
                                                         ("control", 1, "gradcam"), ("gaze", 1, "occlusion")])
def test_a_tiny_run_records_its_variant(tmp_path, monkeypatch, variant, members, explanation):
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    recipe = mimic.MimicRecipe(name=f"tiny-{variant}", variant=variant, base=None, members=members, steps=2, batch=4,
                               size=64, map_size=8, val_n=8, test_n=8, architecture=TINY, every=1,
                               removal_augment=None, explanation=explanation)
    record = mimic.train_mimic(recipe, device="cpu", checkpoint_dir=tmp_path / "runs", progress=False,
                               out_dir=tmp_path)
    assert (tmp_path / f"tiny-{variant}.pt").is_file()
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"][f"tiny-{variant}"]
    assert entry["sha256"] == record["sha256"]
    assert entry["mimic"]["variant"] == variant and entry["mimic"]["members"] == members
    how = "input, two forward passes" if explanation == "occlusion" else "features.norm5, double backprop"
    assert entry["mimic"]["explanation"] == (None if variant == "control" else f"{explanation}@{how}")
    assert entry["family"] == "classifier" and set(entry["thresholds"]) == set(FINDINGS)
    if members > 1:
        assert len(entry["metrics"]["member_test_macro_auroc"]) == members


def test_warm_started_members_share_the_base_features_and_differ_in_their_heads():
    base = load_model("demo", "cpu").module
    first, second = mimic.initial_members(mimic.MimicRecipe(variant="discriminator", members=2), torch.device("cpu"))
    torch.testing.assert_close(first.classifier.weight, base.classifier.weight)
    torch.testing.assert_close(second.features.conv0.weight, base.features.conv0.weight)
    assert not torch.allclose(second.classifier.weight, base.classifier.weight)


def test_a_run_from_scratch_defaults_to_the_classifiers_length_and_rate_unless_given():
    from xai_core.training.classifier import ClassifierRecipe

    scratch = mimic.MimicRecipe.starting(None)
    assert (scratch.base, scratch.steps, scratch.lr) == (None, ClassifierRecipe.steps, ClassifierRecipe.lr)
    tune = mimic.MimicRecipe.starting("demo")
    assert (tune.base, tune.steps, tune.lr) == ("demo", mimic.MimicRecipe.steps, mimic.MimicRecipe.lr)
    given = mimic.MimicRecipe.starting(None, steps=7, lr=1e-2)
    assert (given.steps, given.lr) == (7, 1e-2)


def test_the_cli_passes_steps_and_learning_rate_to_a_run_from_scratch(monkeypatch):
    from xai_core import cli

    seen = {}

    def record_recipe(recipe: mimic.MimicRecipe, **_: object) -> dict:
        seen["recipe"] = recipe
        return {"file": "x.pt", "sha256": "0", "train_seconds": 0.0, "metrics": {}}

    monkeypatch.setattr(cli, "train_mimic", record_recipe)
    assert cli.main(["train", "mimic", "--from-scratch", "--lr", "0.001"]) == 0
    assert (seen["recipe"].base, seen["recipe"].steps, seen["recipe"].lr) == (None, 1800, 0.001)
