"""Model registry, torchxrayvision loading (weights present/missing), logits contract, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchxrayvision as xrv

from xai_core.errors import TargetError, UnknownNameError
from xai_core.imaging import Radiograph
from xai_core.models import (
    InputSpec,
    MissingWeightsError,
    center_square,
    get_card,
    list_models,
    load_model,
    preprocess,
)
from xai_core.models.xrv import XRV_CLASSIFIERS


def test_registry_lists_every_torchxrayvision_classifier():
    names = list_models()
    for name in XRV_CLASSIFIERS:
        assert name in names
    card = get_card("xrv-densenet121-all")
    assert len(card.labels) == 18 and "Cardiomegaly" in card.labels
    assert card.input == InputSpec(1, 224, (-1024.0, 1024.0))
    assert card.cam_layer == "features.norm5"
    assert all(0 < t < 1 for t in card.thresholds.values())
    nih = get_card("xrv-densenet121-nih")
    assert len(nih.labels) == 14 and "" not in nih.labels, "untrained outputs are not labels"
    assert get_card("xrv-resnet50-all").input.size == 512


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="xrv-densenet121-all"):
        get_card("no-such-model")


def test_missing_weights_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XRV_DATA_DIR", str(tmp_path / "xrv"))
    monkeypatch.delenv("XAI_DOWNLOAD_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as info:
        load_model("xrv-densenet121-all")
    message = str(info.value)
    assert get_card("xrv-densenet121-all").weights_file in message
    assert str(tmp_path) in message and "XAI_WEIGHTS_DIR" in message


def test_weights_load_from_weights_dir_and_give_logits(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = xrv.models.DenseNet(weights=None, num_classes=18).eval()
    card = get_card("xrv-densenet121-nih")
    torch.save(reference, tmp_path / card.weights_file)  # torchxrayvision ships whole pickled modules
    monkeypatch.setenv("XAI_WEIGHTS_DIR", str(tmp_path))
    handle = load_model("xrv-densenet121-nih")
    assert handle.random_weights is False
    assert not any(p.requires_grad for p in handle.module.parameters())
    x = torch.randn(2, 1, 224, 224) * 300
    with torch.no_grad():
        expected = reference.classifier(reference.features2(x.clone()))[:, card.provenance["output_indices"]]
        ours = handle.module(x)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # torchxrayvision's own forward with operating points returns op_norm(sigmoid), which we must not explain
    reference.op_threshs = torch.tensor(xrv.models.model_urls["nih"]["op_threshs"], dtype=torch.float32)
    with torch.no_grad():
        normed = reference(x.clone())[:, card.provenance["output_indices"]]
    assert not torch.allclose(normed, ours, atol=1e-3)


def test_random_weights_when_allowed_and_labels_line_up():
    handle = load_model("xrv-densenet121-chex", allow_random_weights=True)
    assert handle.random_weights
    with torch.no_grad():
        out = handle.module(torch.zeros(3, 1, 224, 224))
    assert out.shape == (3, len(handle.card.labels))
    assert handle.label_index("cardiomegaly") == handle.card.labels.index("Cardiomegaly")
    with pytest.raises(TargetError, match="not a label"):
        handle.label_index("Hernia")


def test_resnet50_random_weights_forward():
    handle = load_model("xrv-resnet50-all", allow_random_weights=True)
    with torch.no_grad():
        out = handle.module(torch.zeros(1, 1, 512, 512))
    assert out.shape == (1, 18)
    assert isinstance(handle.layer(handle.card.cam_layer), torch.nn.Module)


def test_cam_layer_activations_survive_the_forward():
    """The CAM layer output must not be clamped by an in-place ReLU after the hook has seen it."""
    handle = load_model("xrv-densenet121-all", allow_random_weights=True)
    captured = {}
    hook = handle.layer("features.norm5").register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        with torch.no_grad():
            handle.module(torch.randn(1, 1, 224, 224) * 500)
    finally:
        hook.remove()
    assert (captured["a"] < 0).any(), "norm5 output still has its negative values"


def test_preprocess_crops_centre_square_and_scales():
    pixels = np.zeros((300, 200), dtype=np.float32)
    pixels[50:250, :] = 1.0  # exactly the centre square is white
    radiograph = Radiograph(pixels=pixels, raw=pixels, meta={}, sha256="x", source_name="t")
    x, box = preprocess(radiograph, InputSpec(1, 224, (-1024.0, 1024.0)))
    assert box == center_square(300, 200) and (box.top, box.left, box.size) == (50, 0, 200)
    assert x.shape == (1, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 1024.0))
    x3, _ = preprocess(radiograph, InputSpec(3, 64, (0.0, 1.0)))
    assert x3.shape == (3, 64, 64) and float(x3.max()) == 1.0


@pytest.mark.parametrize("name", ["demo", "xrv-densenet121-all", "xrv-resnet50-all"])
def test_scoring_module_folds_batch_norms_and_keeps_the_logits(name):
    handle = load_model(name, allow_random_weights=True)
    torch.manual_seed(0)
    x = torch.rand(2, 1, handle.card.input.size, handle.card.input.size) * 2048 - 1024
    folded = handle.scoring_module()
    assert handle.scoring_module() is folded
    norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) < len([m for m in handle.module.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    with torch.inference_mode():
        plain, fast = handle.module(x), folded(x)
    assert torch.allclose(plain, fast, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_scoring_module_is_the_plain_module_when_tracing_fails():
    from xai_core.models.base import ModelHandle

    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum((1, 2, 3))[:, None] if x.sum() > 0 else -x.sum((1, 2, 3))[:, None]

    handle = ModelHandle(card=get_card("demo"), module=Branchy(), device=torch.device("cpu"))
    assert handle.scoring_module() is handle.module


@pytest.mark.parametrize("name", ["demo", "xrv-densenet121-all", "xrv-resnet50-all"])
def test_scorer_runs_float32_cpu_forwards_on_onnx_runtime_with_the_same_logits(name):
    from xai_core.models.onnx_forward import OnnxForward

    handle = load_model(name, allow_random_weights=True)
    torch.manual_seed(0)
    x = torch.rand(3, 1, handle.card.input.size, handle.card.input.size) * 2048 - 1024
    forward = handle.scorer()
    assert isinstance(forward, OnnxForward) and handle.scorer() is forward  # built once per thread count
    with torch.inference_mode():
        plain = handle.module(x)
    got = forward(x)
    assert got.dtype == torch.float32 and got.shape == plain.shape
    assert torch.allclose(got, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_scorer_builds_one_onnx_session_per_thread_count():
    from xai_core.models.onnx_forward import OnnxForward

    handle = load_model("demo", allow_random_weights=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = handle.scorer()
        torch.set_num_threads(2)
        two = handle.scorer()
    finally:
        torch.set_num_threads(threads)
    assert isinstance(one, OnnxForward) and isinstance(two, OnnxForward) and one is not two
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert two.session.get_session_options().intra_op_num_threads == 2


def test_scorer_keeps_pytorch_for_bfloat16_and_where_onnx_cannot_run_the_model(monkeypatch):
    from xai_core.models import onnx_forward
    from xai_core.models.base import ModelHandle

    handle = load_model("demo", allow_random_weights=True)
    x = torch.rand(2, 1, 224, 224) * 2048 - 1024
    with torch.inference_mode():
        plain = handle.module(x)
        bf16 = handle.scorer(bfloat16=True)
        assert not isinstance(bf16, onnx_forward.OnnxForward)
        assert (bf16(x) - plain).abs().max() < 0.1 * float(plain.abs().max())  # bfloat16 rounding, same logits

    class Branchy(torch.nn.Module):  # data-dependent control flow: the exporter fixes one branch
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))[:, None] if x.mean() > 0 else -x.mean((1, 2, 3))[:, None]

    branchy = ModelHandle(card=get_card("demo"), module=Branchy(), device=torch.device("cpu"))
    # the trace would fix the probe's branch: refused, so both branches still run right
    forward = branchy.scorer()
    assert not isinstance(forward, onnx_forward.OnnxForward)
    for sign in (1, -1):
        assert torch.allclose(forward(sign * x.abs()), branchy.module(sign * x.abs()))

    monkeypatch.setattr(onnx_forward, "export_onnx", lambda *a: (_ for _ in ()).throw(RuntimeError("no export")))
    fresh = load_model("demo", allow_random_weights=True)
    fallback = fresh.scorer()
    assert not isinstance(fallback, onnx_forward.OnnxForward)
    with torch.inference_mode():
        assert torch.allclose(fallback(x), plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_xai_no_onnx_keeps_every_forward_on_pytorch(monkeypatch):
    from xai_core.models.onnx_forward import OnnxForward

    monkeypatch.setenv("XAI_NO_ONNX", "1")
    handle = load_model("demo", allow_random_weights=True)
    assert handle.onnx("logits", lambda: handle.module) is None
    assert not isinstance(handle.scorer(), OnnxForward)


def test_a_fresh_process_sees_the_whole_registry_from_two_threads_at_once():
    """The registries are filled when their packages are imported (under Python's import lock), never lazily:
    the first two concurrent requests of a cold server both see every model and every method."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = """
import json, threading
barrier, seen = threading.Barrier(2), []
def ask():
    barrier.wait()
    from xai_core.explainers import list_explainers
    from xai_core.models import list_models
    seen.append([list_models(None), list_explainers()])
threads = [threading.Thread(target=ask) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join(120)
print(json.dumps(seen))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert set(seen[0][0]) == set(list_models(None)) and "demo" in seen[0][0] and "xrv-pspnet" in seen[0][0]
    assert "nemt" in seen[0][1] and len(seen[0][1]) == 7
