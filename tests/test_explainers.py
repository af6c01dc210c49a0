"""Every registered explainer: batch sizes, targets, device, determinism, hook removal; cross-checks with peers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_core.errors import ParameterError, TargetError
from xai_core.explainers import get_explainer, list_explainers
from xai_core.models import load_model
from xai_core.phantom import generate_case
from xai_core.training.common import to_model_input

FAST_PARAMS = {"ig": {"steps": 8, "batch": 24}, "scorecam": {"top_k": 16}}


@pytest.fixture(scope="module")
def demo(demo_nemt_decoder):
    return load_model("demo")


def phantom_batch(n: int, findings: list[str] | None = None) -> torch.Tensor:
    images = [to_model_input(generate_case("test", i, size=224, findings=findings).image) for i in range(n)]
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def exact_params(method: str) -> dict:
    """FAST_PARAMS pinned to float32 where the method has a precision: these tests are about equality, and 'auto'
    runs bfloat16 on CPUs with AVX512-BF16/AMX, where a different batch composition rounds differently."""
    params = dict(FAST_PARAMS.get(method, {}))
    if "precision" in get_explainer(method).defaults:
        params["precision"] = "float32"
    return params


def assert_same_map(actual: torch.Tensor, expected: torch.Tensor, method: str) -> None:
    """Equal within float32 rounding, relative to the map's scale: its maximum, or 1 for maps in absolute [0, 1]
    units (NEMt), whose near-empty maps would otherwise get a tolerance below float32 resolution."""
    scale = 1.0 if get_explainer(method).unit_range else float(expected.max())
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4 * scale + 1e-6)


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("method", list_explainers())
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_values_and_targets(demo, method, batch):
    explainer = get_explainer(method)
    x = phantom_batch(batch)
    hooks = hook_count(demo.module)
    for target in (1, 3):  # Cardiomegaly, Effusion
        targets = torch.full((batch,), target, dtype=torch.long)
        maps = explainer.explain(demo, x, targets, **exact_params(method))
        assert maps.shape == (batch, 224, 224) and maps.dtype == torch.float32
        assert maps.device.type == demo.device.type
        assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert hook_count(demo.module) == hooks, "hooks removed"
    if batch == 3:
        single = explainer.explain(demo, x[1:2], torch.tensor([3]), **exact_params(method))
        assert_same_map(single[0], maps[1], method)


@pytest.mark.parametrize("method", list_explainers())
def test_one_image_with_several_targets_equals_separate_calls(demo, method):
    """The evaluation runner explains all findings of a case in one call; shared per-image work must not leak
    across targets."""
    explainer = get_explainer(method)
    x = phantom_batch(1)
    together = explainer.explain(demo, x.expand(2, *x.shape[1:]), torch.tensor([1, 3]), **exact_params(method))
    for row, target in enumerate((1, 3)):
        alone = explainer.explain(demo, x, torch.tensor([target]), **exact_params(method))[0]
        assert_same_map(together[row], alone, method)


@pytest.mark.parametrize("method", list_explainers())
def test_deterministic(demo, method):
    explainer = get_explainer(method)
    x = phantom_batch(2)
    targets = torch.tensor([1, 3])
    a = explainer.explain(demo, x, targets, **FAST_PARAMS.get(method, {}))
    b = explainer.explain(demo, x, targets, **FAST_PARAMS.get(method, {}))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", list_explainers())
def test_hooks_removed_after_an_exception(demo, method):
    explainer = get_explainer(method)
    hooks = hook_count(demo.module)
    with pytest.raises(TargetError, match="out of range"):
        explainer.explain(demo, phantom_batch(1), torch.tensor([99]), **FAST_PARAMS.get(method, {}))
    assert hook_count(demo.module) == hooks
    with pytest.raises(ParameterError, match="no parameter"):
        explainer.explain(demo, phantom_batch(1), torch.tensor([0]), bogus=1)
    assert hook_count(demo.module) == hooks


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_gradcam_family_on_densenet121_with_inplace_relu(method):
    handle = load_model("xrv-densenet121-all", allow_random_weights=True)
    x = torch.randn(2, 1, 224, 224) * 400
    maps = get_explainer(method).explain(handle, x, torch.tensor([10, 7]))
    assert maps.shape == (2, 224, 224) and torch.isfinite(maps).all()


@pytest.mark.parametrize("model", ["demo", "xrv-densenet121-all"])
@pytest.mark.parametrize("ours,theirs", [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus")])
def test_gradcam_matches_pytorch_grad_cam(model, ours, theirs):
    """On trained demo weights and on a random-weight DenseNet121, whose tiny gradients make Grad-CAM++'s epsilon
    matter."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    handle = load_model(model, allow_random_weights=True)
    x = phantom_batch(3, ["Cardiomegaly", "Effusion"])
    targets = [1, 3, 1]
    mine = get_explainer(ours).explain(handle, x, torch.tensor(targets)).numpy()
    layer = handle.layer(handle.card.cam_layer)
    with getattr(pytorch_grad_cam, theirs)(model=handle.module, target_layers=[layer]) as cam:
        # the peer backpropagates from the input; our loaded models have frozen parameters
        reference = cam(input_tensor=x.clone().requires_grad_(True),
                        targets=[ClassifierOutputTarget(t) for t in targets])
    for a, b in zip(mine, reference, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("rule,captum_method", [("gausslegendre", "gausslegendre"),
                                                ("riemann_right", "riemann_right")])
def test_ig_matches_captum(demo, rule, captum_method):
    from captum.attr import IntegratedGradients

    x = phantom_batch(2, ["Nodule"])
    targets = torch.tensor([5, 5])
    baseline = torch.full_like(x, -1024.0)
    ours = get_explainer("ig").attribute(demo, x, targets, steps=16, rule=rule, batch=32, precision="float32")
    reference = IntegratedGradients(demo.module).attribute(x, baselines=baseline, target=targets, n_steps=16,
                                                           method=captum_method)
    error = (ours - reference).norm() / reference.norm()
    assert error < 1e-3, float(error)


def test_ig_completeness_improves_with_steps(demo):
    explainer = get_explainer("ig")
    x = phantom_batch(1, ["Effusion"])
    coarse = explainer.completeness_gap(demo, x, torch.tensor([3]), steps=4, precision="float32").abs().item()
    fine = explainer.completeness_gap(demo, x, torch.tensor([3]), steps=32, precision="float32").abs().item()
    assert fine <= coarse + 1e-3


def test_ig_auto_precision_stays_close_to_float32(demo):
    """'auto' is bfloat16 autocast only where the hardware runs it fast; its maps stay close to the exact ones."""
    from xai_core.models.base import bfloat16_supported

    explainer = get_explainer("ig")
    x = phantom_batch(2, ["Effusion", "Nodule"])
    targets = torch.tensor([3, 5])
    exact = explainer.explain(demo, x, targets, precision="float32").numpy()
    auto = explainer.explain(demo, x, targets).numpy()
    if bfloat16_supported(demo.device):
        for a, b in zip(auto, exact, strict=True):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.98
    else:
        np.testing.assert_array_equal(auto, exact)
    with pytest.raises(ValueError, match="precision"):
        explainer.explain(demo, x, targets, steps=8, precision="half")


def test_xrai_reuses_the_ig_methods_integral_inside_shared_integrals(demo, monkeypatch):
    from xai_core.explainers import ig as ig_module

    x = phantom_batch(1, ["Effusion", "Nodule"]).expand(2, -1, -1, -1)
    assert x.min().item() == demo.card.input.value_range[0]  # XRAI's low baseline is then the black one
    targets = torch.tensor([3, 5])
    params = {"steps": 4, "batch": 8}
    alone = get_explainer("xrai").explain(demo, x, targets, **params)
    integrals = []
    real = ig_module._integrate
    monkeypatch.setattr(ig_module, "_integrate", lambda *a: integrals.append(a[4]) or real(*a))
    with ig_module.shared_integrals():
        ig_map = get_explainer("ig").explain(demo, x, targets, **params)
        shared = get_explainer("xrai").explain(demo, x, targets, **params)
    assert len(integrals) == 2  # ig's black baseline, then only XRAI's high baseline (not 3)
    torch.testing.assert_close(shared, alone, rtol=0, atol=0)
    torch.testing.assert_close(ig_map, get_explainer("ig").explain(demo, x, targets, **params), rtol=0, atol=0)
    assert len(integrals) == 3  # outside the block nothing is remembered
    with ig_module.shared_integrals():
        get_explainer("ig").explain(demo, x, torch.tensor([3, 4]), **params)  # other targets: computed anew
    assert len(integrals) == 4


def test_scorecam_matches_pytorch_grad_cam(demo):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = phantom_batch(1, ["Mass"])
    mine = get_explainer("scorecam").explain(demo, x, torch.tensor([4]))[0].numpy()
    with ScoreCAM(model=demo.module, target_layers=[demo.layer(demo.card.cam_layer)]) as cam:
        cam.batch_size = 64
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(4)])[0]
    assert np.corrcoef(mine.ravel(), reference.ravel())[0, 1] >= 0.99


def test_scorecam_top_k_is_a_cheaper_approximation(demo):
    x = phantom_batch(1, ["Mass"])
    full = get_explainer("scorecam").explain(demo, x, torch.tensor([4]))[0].numpy()
    fast = get_explainer("scorecam").explain(demo, x, torch.tensor([4]), top_k=64)[0].numpy()
    assert np.corrcoef(full.ravel(), fast.ravel())[0, 1] > 0.8


def test_scorecam_bfloat16_matches_float32_or_says_why_not(demo):
    from xai_core.models.base import bfloat16_supported

    x = phantom_batch(1, ["Mass"])
    explainer = get_explainer("scorecam")
    with pytest.raises(ValueError, match="precision"):
        explainer.explain(demo, x, torch.tensor([4]), precision="float16")
    if not bfloat16_supported(torch.device("cpu")):
        with pytest.raises(ValueError, match="AVX512-BF16/AMX"):
            explainer.explain(demo, x, torch.tensor([4]), precision="bfloat16")
        return
    full = explainer.explain(demo, x, torch.tensor([4]), precision="float32")[0].numpy()
    fast = explainer.explain(demo, x, torch.tensor([4]), precision="bfloat16")[0].numpy()
    auto = explainer.explain(demo, x, torch.tensor([4]))[0].numpy()
    np.testing.assert_array_equal(auto, fast)  # auto picks bfloat16 where it is fast
    assert fast.dtype == np.float32
    assert np.corrcoef(full.ravel(), fast.ravel())[0, 1] > 0.999


def test_engine_explain_caches_and_reports_time(sample_png):
    from xai_core.engine import Engine
    from xai_core.imaging import load_radiograph

    engine = Engine("cpu")
    radiograph = load_radiograph(sample_png)
    first = engine.explain(radiograph, "demo", "gradcam", "Cardiomegaly")
    assert first.map.shape == (224, 224) and first.target == "Cardiomegaly" and first.seconds > 0
    assert engine.explain(radiograph, "demo", "gradcam", "cardiomegaly") is first
    assert engine.explain(radiograph, "demo", "gradcam", "Effusion") is not first
    with pytest.raises(TargetError, match="not a label"):
        engine.explain(radiograph, "demo", "gradcam", "Hernia")


def test_xrai_greedy_matches_the_reference_loop():
    """Our incremental greedy cover gives the same map as the straightforward per-step recomputation."""
    from xai_core.explainers.xrai import greedy_regions

    rng = np.random.default_rng(0)
    attribution = rng.random((40, 40))
    masks = np.zeros((25, 40, 40), bool)
    for i in range(25):
        (y, x), r = rng.integers(0, 40, 2).tolist(), int(rng.integers(4, 12))
        masks[i, max(0, y - r):y + r, max(0, x - r):x + r] = True
    reference = np.full(attribution.shape, -np.inf)
    covered = np.zeros(attribution.shape, bool)
    remaining = list(range(25))
    while covered.mean() <= 1.0:
        remaining = [i for i in remaining if (masks[i] & ~covered).sum() >= 50]
        if not remaining:
            break
        gains = [attribution[masks[i] & ~covered].mean() for i in remaining]
        best = remaining[int(np.argmax(gains))]
        new = masks[best] & ~covered
        reference[new] = max(gains)
        covered |= new
        remaining.remove(best)
    reference[~covered] = attribution[~covered].mean()
    np.testing.assert_allclose(greedy_regions(attribution, masks), reference)



def test_xrai_matches_pair_saliency_at_the_same_ig_settings(demo):
    """Same IG (8 steps, saliency's linspace rule, min/max baselines), same segments and greedy cover: the top-10%
    regions agree (the speed benchmark compares both at their own defaults)."""
    import saliency.core as saliency

    x = phantom_batch(2, findings=["Effusion"])[1:2]
    target = 3

    def call_model(images, call_model_args=None, expected_keys=None):
        batch = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2).requires_grad_(True)
        (grads,) = torch.autograd.grad(demo.module(batch)[:, target].sum(), batch)
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}

    parameters = saliency.XRAIParameters(steps=8)
    theirs = saliency.XRAI().GetMask(x[0].permute(1, 2, 0).numpy(), call_model, batch_size=8,
                                     extra_parameters=parameters)
    ours = get_explainer("xrai").explain(demo, x, torch.tensor([target]), steps=8, rule="linspace",
                                         precision="float32")[0].numpy()
    top_a, top_b = ours >= np.quantile(ours, 0.9), theirs >= np.quantile(theirs, 0.9)
    assert (top_a & top_b).sum() / (top_a | top_b).sum() >= 0.9
