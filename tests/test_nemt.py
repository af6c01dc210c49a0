"""NEMt: the loss on a toy classifier with a known answer, the decoder, forward reuse, training and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from xai_core.models import bundled, load_model
from xai_core.nemt import NEMtDecoder, keep_mask, nemt_loss, pyramid_forward, random_kernel, smooth, tap_channels
from xai_core.nemt.module import LabelPointwise, Pointwise, box_filter
from xai_core.phantom import generate_case
from xai_core.training import common
from xai_core.training.common import to_model_input


class RegionClassifier(nn.Module):
    """Two labels; label 0 fires on the mean brightness of the top-left square, label 1 on the bottom-right one."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        regions = torch.zeros(2, size, size)
        regions[0, 4:12, 4:12] = 1
        regions[1, 20:28, 20:28] = 1
        self.register_buffer("regions", regions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = (x[:, 0:1] * self.regions).sum((-2, -1)) / self.regions.sum((-2, -1))
        return 12 * means - 6


def test_loss_is_lowest_for_the_mask_that_deletes_exactly_the_evidence():
    classifier = RegionClassifier()
    x = torch.ones(1, 1, 32, 32)
    target = torch.tensor([0])
    p = torch.sigmoid(classifier(x)[:, 0])
    exact = 1 - classifier.regions[0].view(1, 1, 32, 32)
    losses = {name: nemt_loss(classifier, x, m, target, p)[0].item() for name, m in {
        "keep all": torch.ones(1, 1, 32, 32), "delete all": torch.zeros(1, 1, 32, 32), "exact": exact,
        "wrong region": 1 - classifier.regions[1].view(1, 1, 32, 32)}.items()}
    assert losses["exact"] == min(losses.values())
    assert losses["exact"] < 0.1 and losses["keep all"] == pytest.approx(2.0) and losses["wrong region"] > 1.9


def test_optimising_a_free_mask_finds_the_evidence_region():
    classifier = RegionClassifier()
    x = torch.ones(1, 1, 32, 32)
    target = torch.tensor([1])
    p = torch.sigmoid(classifier(x)[:, 1])
    logits = torch.zeros((1, 1, 32, 32), requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        loss, _ = nemt_loss(classifier, x, torch.sigmoid(logits), target, p)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    deleted = (torch.sigmoid(logits) < 0.5)[0, 0]
    region = classifier.regions[1].bool()
    iou = (deleted & region).sum() / (deleted | region).sum()
    assert iou > 0.8


def test_a_negative_target_is_best_explained_by_keeping_everything():
    classifier = RegionClassifier()
    x = torch.zeros(1, 1, 32, 32)  # nothing bright: both labels negative
    p = torch.sigmoid(classifier(x)[:, 0])
    keep_all = nemt_loss(classifier, x, torch.ones(1, 1, 32, 32), torch.tensor([0]), p)[0]
    delete_some = nemt_loss(classifier, x, 1 - classifier.regions[0].view(1, 1, 32, 32), torch.tensor([0]), p)[0]
    assert keep_all < delete_some


def test_box_filter_equals_average_pooling_and_random_kernels_sum_to_one():
    x = torch.rand(2, 1, 40, 50)
    padded = torch.nn.functional.pad(x, (10,) * 4, mode="replicate")
    torch.testing.assert_close(box_filter(x, 21), torch.nn.functional.avg_pool2d(padded, 21, stride=1))
    kernel = random_kernel(torch.Generator().manual_seed(0))
    assert kernel.shape == (1, 1, 21, 21) and kernel.sum().item() == pytest.approx(1.0)
    assert torch.equal(kernel, random_kernel(torch.Generator().manual_seed(0)))
    constant = torch.full((1, 1, 30, 30), 0.3)
    torch.testing.assert_close(smooth(constant, kernel), constant)


def test_pointwise_is_a_1x1_convolution():
    layer = Pointwise(6, 3)
    x = torch.randn(2, 6, 9, 7)
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x, layer.weight, layer.bias))


def test_a_label_head_applies_each_sample_its_targets_row():
    head = LabelPointwise(5, 3)
    x = torch.randn(2, 5, 6, 4)
    out = head(x, torch.tensor([2, 0]))
    for i, label in enumerate((2, 0)):
        expected = nn.functional.conv2d(x[i:i + 1], head.weight[label].view(1, 5, 1, 1), head.bias[label:label + 1])
        torch.testing.assert_close(out[i:i + 1], expected)
    grey = LabelPointwise(1, 3)
    y = torch.randn(2, 1, 6, 4)
    torch.testing.assert_close(grey(y, torch.tensor([1, 1])), y * grey.weight[1] + grey.bias[1])


def test_folding_the_batch_norms_keeps_the_logits():
    torch.manual_seed(0)
    channels = [8, 12, 16, 20, 24]
    decoder = NEMtDecoder(channels, 3, widths=(8, 6))
    for block in decoder.blocks:
        for norm in (block.norm1, block.norm2):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(norm.weight)
            nn.init.normal_(norm.bias)
        nn.init.normal_(block.film.weight, std=0.1)
    x = torch.randn(2, 1, 64, 64)
    taps = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(channels)]
    targets = torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match="eval-mode"):
        decoder.fold_norms()
    decoder.eval()
    with torch.inference_mode():
        before = decoder(taps, x, targets)
        after = decoder.fold_norms()(taps, x, targets)
    assert before.shape == (2, 1, 64, 64) and len(decoder.skip_heads) == 2
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in decoder.modules())


@pytest.fixture(scope="module")
def demo(demo_nemt_decoder):
    return load_model("demo")


def test_pyramid_forward_gives_the_plain_logits(demo):
    x = torch.from_numpy(to_model_input(generate_case("test", 0, size=224).image))[None, None]
    with torch.inference_mode():
        logits, taps = pyramid_forward(demo.module, x)
        torch.testing.assert_close(logits, demo.module(x))
    assert [t.shape[-1] for t in taps] == [112, 56, 28, 14, 7]
    assert [t.shape[1] for t in taps] == tap_channels(demo.module, 1)


@pytest.mark.parametrize("name", ["demo", "xrv-densenet121-all"])
def test_handle_pyramid_runs_on_onnx_runtime_with_the_same_logits_and_taps(name):
    from xai_core.explainers import get_explainer
    from xai_core.nemt import handle_pyramid

    handle = load_model(name, allow_random_weights=True)
    x = torch.from_numpy(to_model_input(generate_case("test", 3, size=224).image))[None, None].repeat(2, 1, 1, 1)
    with torch.inference_mode():
        logits, taps = pyramid_forward(handle.module, x)
        fast_logits, fast_taps = handle_pyramid(handle, x)
    assert handle._onnx[("pyramid", torch.get_num_threads())] is not None  # ONNX Runtime ran it, not a fallback
    for a, b in zip([fast_logits, *fast_taps], [logits, *taps], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b.contiguous(), rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    if name == "demo":  # the registered method runs classifier and decoder as one graph, with PyTorch's maps
        from xai_core.nemt import explanation_from_taps, load_decoder

        targets = torch.tensor([0, 3])
        maps = get_explainer("nemt").explain(handle, x, targets)
        assert any(key[0].startswith("nemt-") and graph is not None for key, graph in handle._onnx.items())
        torch.testing.assert_close(maps, explanation_from_taps(load_decoder(handle), taps, x, targets), rtol=0,
                                   atol=1e-4)


def test_a_registered_decoder_replaces_the_graph_of_the_one_before():
    from xai_core.explainers import get_explainer
    from xai_core.nemt import _DECODERS, explanation_from_taps, register_decoder

    handle = load_model("xrv-densenet121-all", allow_random_weights=True)
    x = torch.from_numpy(to_model_input(generate_case("test", 3, size=224).image))[None, None]
    targets = torch.tensor([2])
    channels = tap_channels(handle.module, 1)
    key = (handle.card.name, str(handle.device))
    try:
        for seed in (0, 1):  # the first decoder is freed when the second replaces it: its id may be reused
            torch.manual_seed(seed)
            decoder = NEMtDecoder(channels, len(handle.card.labels)).eval()
            torch.nn.init.normal_(decoder.cam.weight, std=0.05)  # a map that depends on the weights
            register_decoder(handle, decoder)
            maps = get_explainer("nemt").explain(handle, x, targets)
            with torch.inference_mode():
                _, taps = pyramid_forward(handle.module, x)
            torch.testing.assert_close(maps, explanation_from_taps(decoder, taps, x, targets), rtol=0, atol=1e-4)
            del decoder
    finally:
        _DECODERS.pop(key, None)


def test_pyramid_works_for_torchxrayvision_densenet121():
    handle = load_model("xrv-densenet121-all", allow_random_weights=True)
    decoder = NEMtDecoder(tap_channels(handle.module, 1), len(handle.card.labels)).eval()
    x = torch.randn(2, 1, 224, 224) * 300
    with torch.inference_mode():
        _, taps = pyramid_forward(handle.module, x)
        mask = keep_mask(decoder, taps, x, torch.tensor([0, 5]))
    assert mask.shape == (2, 1, 224, 224) and ((mask >= 0) & (mask <= 1)).all()


def test_cam_readout_starts_deletion_where_the_classifier_sees_the_target(demo):
    """At initialisation the keep-logits are the keep bias minus the scaled class activation map: a positive
    target's map is deleted around its lesion, a negative target keeps (nearly) everything."""
    from xai_core.metrics import relevance_mass
    from xai_core.nemt import explanation_from_taps
    from xai_core.nemt.module import CAM_SCALE, KEEP_BIAS

    torch.manual_seed(0)
    decoder = NEMtDecoder(tap_channels(demo.module, 1), len(demo.card.labels))
    decoder.init_cam_readout(demo.module.classifier, demo.module.outputs)
    head = demo.module.classifier.weight[demo.module.outputs]
    torch.testing.assert_close(decoder.cam.weight[:, :, 0, 0], CAM_SCALE * head)
    for layer in (decoder.head, decoder.input_head, *decoder.skip_heads):  # leave only the CAM path
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    decoder.eval()
    case = next(c for c in (generate_case("test", i, size=224) for i in range(50)) if "Mass" in c.labels)
    x = torch.from_numpy(to_model_input(case.image))[None, None]
    with torch.inference_mode():
        _, taps = pyramid_forward(demo.module, x)
        cam = torch.einsum("lc,chw->lhw", head, taps[-1][0])
        logits = decoder(taps, x, torch.tensor([4]))
    expected = KEEP_BIAS - CAM_SCALE * cam[4][None, None]
    for size in (14, 28, 56, 112, 224):  # the logits climb the pyramid one level at a time
        expected = nn.functional.interpolate(expected, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    positive = explanation_from_taps(decoder, taps, x, torch.tensor([4]))[0].numpy()
    negative_label = next(i for i, label in enumerate(demo.card.labels) if label not in case.labels)
    negative = explanation_from_taps(decoder, taps, x, torch.tensor([negative_label]))[0].numpy()
    assert positive.max() > 0.5 and negative.max() < 0.25
    assert relevance_mass(positive[None], case.lesions["Mass"][None])[0] > 3 * case.lesions["Mass"].mean()


def test_the_bundled_module_explains_each_target_on_its_own_lesion(demo, demo_nemt_decoder):
    """A case with two findings: each target's map puts more of its relevance on its own lesion than on the other
    one; a negative target's map is near-empty."""
    from xai_core.metrics import relevance_mass
    from xai_core.nemt import explanation_from_taps

    localised = ("Atelectasis", "Consolidation", "Mass", "Pneumothorax")  # occluding an effusion moves nothing
    case = next(c for c in (generate_case("test", i, size=224) for i in range(200))
                if sum(f in localised for f in c.labels) == 2 and len(c.labels) == 2)
    first, second = case.labels
    x = torch.from_numpy(to_model_input(case.image))[None, None]
    with torch.inference_mode():
        _, taps = pyramid_forward(demo.module, x)
    maps = {label: explanation_from_taps(demo_nemt_decoder, taps, x, torch.tensor([demo.card.labels.index(label)])
                                         )[0].numpy() for label in demo.card.labels}
    for own, other in ((first, second), (second, first)):
        on_own = relevance_mass(maps[own][None], case.lesions[own][None])[0]
        assert on_own > relevance_mass(maps[own][None], case.lesions[other][None])[0]
        assert on_own > 3 * case.lesions[own].mean()
    assert np.corrcoef(maps[first].ravel(), maps[second].ravel())[0, 1] < 0.5
    for label in (label for label in demo.card.labels if label not in case.labels):
        assert maps[label].mean() < 0.1 and (maps[label] > 0.5).mean() < 0.05, label


def test_engine_reuses_the_prediction_forward(sample_png, demo_nemt_decoder):
    from xai_core.engine import Engine
    from xai_core.imaging import load_radiograph

    engine = Engine("cpu")
    radiograph = load_radiograph(sample_png)
    cold = engine.explain(radiograph, "demo", "nemt", "Effusion")
    engine.cache.clear()
    engine.predict(radiograph, "demo")
    warm = engine.explain(radiograph, "demo", "nemt", "Effusion")
    assert engine.stats.reused_forwards == 1
    # cold: classifier and decoder as one ONNX Runtime graph; warm: the PyTorch decoder. Each one's box filter is
    # within 1e-5 of the exact mean (float32 running sums), so the two maps are within 2e-5 of each other
    np.testing.assert_allclose(warm.map, cold.map, atol=2e-5)


def test_a_few_training_steps_lower_the_loss(demo):
    from xai_core.training.nemt import NEMtRecipe, build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(demo, NEMtRecipe())
    classifier = demo.module.eval().requires_grad_(False)
    x = torch.from_numpy(np.stack([to_model_input(generate_case("train", i, seed=5, size=224).image)
                                   for i in range(4)])).unsqueeze(1)
    targets = torch.tensor([1, 3, 6, 0])
    with torch.no_grad():
        logits, taps = pyramid_forward(classifier, x)
    p = torch.sigmoid(logits).gather(1, targets.view(-1, 1)).squeeze(1)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return nemt_loss(classifier, x, keep_mask(decoder, taps, x, targets), targets, p)[0]

    before = loss().item()
    for _ in range(8):
        value = loss()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    assert loss().item() < before


def test_train_nemt_records_and_resumes(tmp_path, monkeypatch):
    from xai_core.training.nemt import NEMtRecipe, train_nemt

    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "manifest.json")
    recipe = NEMtRecipe(steps=2, batch=2, test_n=2)
    first = train_nemt(recipe, device="cpu", checkpoint_dir=tmp_path, progress=False, out_dir=tmp_path)
    assert common.Checkpoint(tmp_path / "demo-nemt.ckpt").load()["step"] == 2
    weights = torch.load(tmp_path / "demo-nemt.pt", weights_only=True)
    again = train_nemt(recipe, device="cpu", checkpoint_dir=tmp_path, progress=False, out_dir=tmp_path)
    for name, value in torch.load(tmp_path / "demo-nemt.pt", weights_only=True).items():
        torch.testing.assert_close(value, weights[name])
    assert again["sha256"] == first["sha256"]
    stored = json.loads((tmp_path / "manifest.json").read_text())["models"]["demo-nemt"]
    assert stored["family"] == "nemt" and stored["explains"] == "demo"
    assert set(stored["metrics"]["test_positives"]) == {"nemt", "gradcam"}


def test_a_model_without_a_nemt_module_says_how_to_train_one():
    from xai_core.errors import MissingWeightsError
    from xai_core.explainers import get_explainer

    handle = load_model("demo-anatomy")  # any model without a NEMt entry and with real weights
    with pytest.raises(MissingWeightsError, match="train nemt --model demo-anatomy"):
        get_explainer("nemt").explain(handle, torch.zeros(1, 1, 224, 224), torch.tensor([0]))


def test_the_in_distribution_fill_gives_the_deletion_term_a_gradient_where_the_mask_keeps_most():
    from xai_core.nemt.loss import nemt_loss
    from xai_core.training.nemt import fill_image

    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5, padding=2), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten())
    x = torch.randn(2, 1, 32, 32) * 300
    keep = torch.full((2, 1, 32, 32), 0.7, requires_grad=True)  # partly kept everywhere: over 0.5, under 0.95
    fill = fill_image(x, keep, "road", (-1024.0, 1024.0))
    assert not torch.equal(fill, x), "partly kept pixels get an in-filled value"
    targets = torch.tensor([0, 2])
    p = torch.sigmoid(classifier(x)).gather(1, targets.view(-1, 1)).squeeze(1).detach()

    def mask_gradient(lam: float) -> torch.Tensor:
        keep.grad = None
        nemt_loss(classifier, x, keep, targets, p, lam=lam, fill=fill)[0].backward()
        return keep.grad.clone()

    deletion_term = mask_gradient(2.0) - mask_gradient(0.0)  # the area term's share cancels
    assert deletion_term.abs().max() > 1e-6
    assert not torch.equal(fill_image(x, keep.detach().clamp(min=0.96), "road", (-1024.0, 1024.0)), fill)
