"""The explainer template's contract, driven by the registry: every method x {demo, a torchxrayvision DenseNet121
with seeded random weights} x every target form (indices, names, one for all, several per image).

A Captum-style config: adding a method to the registry gives it every test here. `PARAMS` and a 96 px input size
(both networks are fully convolutional up to a global pool; their cards are copied with that size) only make slow
methods cheap enough for a unit test.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from xai_core.errors import InputError, ModelError, ParameterError, TargetError
from xai_core.explainers import get_explainer, list_explainers
from xai_core.models import ModelHandle, load_model
from xai_core.phantom import generate_case
from xai_core.training.common import to_model_input

MODELS = ["demo", "xrv-densenet121-all"]
SIZE = 96
PARAMS = {"ig": {"steps": 4, "batch": 16, "precision": "float32"},
          "xrai": {"steps": 4, "batch": 16, "precision": "float32"},
          "scorecam": {"top_k": 8, "precision": "float32"}}


def at_size(handle: ModelHandle, size: int) -> ModelHandle:
    """The same network behind a card that declares `size` x `size` inputs."""
    card = replace(handle.card, input=replace(handle.card.input, size=size))
    return ModelHandle(card=card, module=handle.module, device=handle.device, random_weights=handle.random_weights)


@pytest.fixture(scope="module", params=MODELS)
def handle(request):
    return at_size(load_model(request.param, allow_random_weights=True), SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    cases = [generate_case("test", i, size=SIZE, findings=f) for i, f in enumerate((["Effusion"], ["Nodule"]))]
    return torch.from_numpy(np.stack([to_model_input(c.image) for c in cases])).unsqueeze(1)


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def explain(method: str, handle, x, targets, **extra):
    return get_explainer(method).explain(handle, x, targets, **PARAMS.get(method, {}), **extra)


def same(a: torch.Tensor, b: torch.Tensor, method: str) -> None:
    """Equal within float32 rounding of another batch composition, relative to the map's scale."""
    scale = 1.0 if get_explainer(method).unit_range else float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-6)


@pytest.mark.parametrize("method", list_explainers())
def test_output_contract_and_target_forms(method, handle, images):
    explainer = get_explainer(method)
    hooks = hook_count(handle.module)
    if not explainer.available(handle):
        with pytest.raises(ModelError):
            explain(method, handle, images, torch.tensor([0, 1]))
        assert hook_count(handle.module) == hooks
        return
    labels = handle.card.labels
    first, second = 0, len(labels) - 1
    by_index = explain(method, handle, images, torch.tensor([first, second]))
    assert by_index.shape == (2, SIZE, SIZE) and by_index.dtype == torch.float32
    assert by_index.device.type == handle.device.type
    assert torch.isfinite(by_index).all() and (by_index >= 0).all()
    assert hook_count(handle.module) == hooks, "hooks removed"

    same(explain(method, handle, images, [labels[first], labels[second].lower()]), by_index, method)  # names
    one_for_all = explain(method, handle, images, labels[first])
    same(one_for_all[0], by_index[0], method)

    several = explain(method, handle, images[:1].expand(3, -1, -1, -1), [first, second, first])  # one image, 3
    same(several[0], by_index[0], method)
    same(several[2], several[0], method)
    alone = explain(method, handle, images[:1], torch.tensor([second]))
    same(several[1], alone[0], method)
    assert hook_count(handle.module) == hooks


@pytest.mark.parametrize("method", list_explainers())
def test_bad_targets_inputs_and_parameters_raise_one_error_type_each(method, handle, images):
    explainer = get_explainer(method)
    hooks = hook_count(handle.module)
    n_labels = len(handle.card.labels)
    for bad in (torch.tensor([n_labels]), torch.tensor([-1]), ["Not a finding"], torch.tensor([0.5])):
        with pytest.raises(TargetError):
            explain(method, handle, images[:1], bad)
    with pytest.raises(TargetError, match="2 targets for 1 images"):
        explain(method, handle, images[:1], [0, 1])
    with pytest.raises(ParameterError, match="no parameter"):
        explainer.explain(handle, images[:1], 0, not_a_parameter=1)
    nan = images[:1].clone()
    nan[0, 0, 10, 10] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        explain(method, handle, nan, 0)
    with pytest.raises(InputError, match="channel"):
        explain(method, handle, images[:1].expand(-1, 3, -1, -1), 0)
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        explain(method, handle, images[0], 0)
    with pytest.raises(InputError, match=f"takes {SIZE} x {SIZE} inputs"):
        explain(method, handle, images[..., :SIZE - 8], 0)
    assert hook_count(handle.module) == hooks


@pytest.mark.parametrize("method", list_explainers())
def test_explaining_from_a_kept_forward_is_declared_by_the_method(method, images):
    handle = at_size(load_model("demo"), SIZE)
    explainer = get_explainer(method)
    if not explainer.reuses_forward:
        with pytest.raises(ParameterError, match="cannot explain from a kept forward"):
            explainer.explain_from_taps(handle, [], images[:1], 0)
        return
    from xai_core.nemt import handle_pyramid

    with torch.inference_mode():
        _, taps = handle_pyramid(handle, images)
    kept = explainer.explain_from_taps(handle, taps, images, ["Effusion", "Nodule"])
    same(kept, explainer.explain(handle, images, ["Effusion", "Nodule"]), method)
    with pytest.raises(TargetError):
        explainer.explain_from_taps(handle, taps, images, ["Effusion", "Hernia"])
