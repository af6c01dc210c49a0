"""A classifier's hook-free float32 CPU forward on ONNX Runtime.

Why: the metrics of `evaluate` and Score-CAM's masked forwards need only logits, thousands of times per run, and
on the CPUs we build on ONNX Runtime runs demo's forward faster than PyTorch eager, most at batch 1 (figures:
docs/benchmarks.md; the NEMt row of `python benchmarks/explainers.py` prints both forwards, same run).
Gradients, hooks and bfloat16 stay on PyTorch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from xai_core.models.cards import InputSpec

# ONNX Runtime's logits agree with PyTorch's to float rounding (demo: 1e-5); a graph the exporter got wrong is far
# beyond this (relative to the largest logit)
AGREEMENT_TOLERANCE = 1e-3


class OnnxForward:
    """x [B, C, S, S] float32 on the CPU -> the module's output (one tensor, or a tuple of tensors), as `module(x)`
    but run by ONNX Runtime."""

    def __init__(self, session, input_name: str) -> None:
        self.session = session
        self.input_name = input_name

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = {self.input_name: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())}
        if targets is not None:  # a target-conditioned module (exported with `labels`)
            feed["targets"] = targets.detach().to("cpu", torch.int64).numpy()
        outputs = tuple(torch.from_numpy(a) for a in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs


def _as_tuple(output: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return output if isinstance(output, tuple) else (output,)


def _probe(spec: InputSpec, labels: int, seed: int | None) -> tuple[torch.Tensor, ...]:
    x = torch.zeros(2, spec.channels, spec.size, spec.size)
    if seed is not None:
        lo, hi = spec.value_range
        x = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo
    return (x, torch.arange(2) % labels) if labels else (x,)


def export_onnx(module: nn.Module, spec: InputSpec, outputs: int = 1, labels: int = 0) -> bytes:
    """The module's forward (`outputs` tensors; inputs x, and targets [B] when `labels`) as an ONNX graph with a
    free batch size; TracerWarning raised as an error where the graph would hold for the probe input only."""
    probe = _probe(spec, labels, None)
    inputs = ["x", "targets"][:len(probe)]
    names = [f"output{i}" for i in range(outputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch's TorchScript exporter is deprecated in favour of torch.export, which exports demo many times more
        # slowly (docs/benchmarks.md); with torch pinned, the fast one is used and its notice silenced
        warnings.simplefilter("ignore", DeprecationWarning)
        # a trace that depends on the probe's values (a Python branch on a tensor) would be wrong for other inputs
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), probe, buffer, input_names=inputs, output_names=names,
                          dynamic_axes={name: {0: "batch"} for name in [*inputs, *names]}, dynamo=False)
    return buffer.getvalue()


def onnx_forward(module: nn.Module, spec: InputSpec, threads: int, outputs: int = 1,
                 labels: int = 0) -> OnnxForward | None:
    """An ONNX Runtime forward of `module` (returning `outputs` tensors; taking targets too when `labels`) on
    `threads` CPU threads, checked against the module's own outputs on a probe batch; None where ONNX Runtime is
    missing, the export fails or the outputs disagree (callers keep PyTorch: only speed is lost)."""
    try:
        import onnxruntime  # optional at run time: without it the PyTorch forward serves (only speed is lost)
    except ImportError:
        return None
    try:
        graph = export_onnx(module, spec, outputs, labels)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # idle threads sleep instead of spinning: evaluate's PIC threads and a browser session share these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception:  # an operator the exporter or the runtime lacks: keep PyTorch
        return None
    forward = OnnxForward(session, session.get_inputs()[0].name)
    probe = _probe(spec, labels, seed=0)
    with torch.inference_mode():
        expected = _as_tuple(module(*probe))
    got = _as_tuple(forward(*probe))
    if len(got) != len(expected):
        return None
    for a, b in zip(got, expected, strict=True):
        scale = max(1.0, float(b.abs().max()))
        if a.shape != b.shape or not torch.allclose(a, b.float(), rtol=0, atol=AGREEMENT_TOLERANCE * scale):
            return None
    return forward
