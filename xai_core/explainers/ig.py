"""Integrated Gradients (Sundararajan et al. 2017) with right-Riemann (default), trapezoid or Gauss-Legendre quadrature.

Right-Riemann is the default: the path integrand of a ReLU network is rough, and at 32 steps evenly spaced nodes
beat Gauss-Legendre's end-clustered ones on the demo model (mean |completeness gap| 0.21 vs 0.26 logits, median
0.13 vs 0.27, 18 phantom test positives; XRAI regions: benchmarks/explainers.py --xrai-agreement).

Precision 'auto' (default) runs the forward and backward passes under bfloat16 autocast where the hardware runs it
fast (AMX CPUs, bf16 GPUs): IG is many forward and backward passes, and there bfloat16 makes each one cheaper for
maps that stay close to float32's (speed-up and agreement: docs/benchmarks.md); 'float32' gives the exact integral."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF

from xai_core.errors import ParameterError
from xai_core.explainers.base import ExplainBatch, Explainer, Targets, group_rows, register
from xai_core.jobs import checkpoint, chunk_size
from xai_core.models import ModelHandle, target_logits
from xai_core.models.base import use_bfloat16


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and weights summing to 1 for the path integral."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "trapezoid":
        nodes = np.linspace(0, 1, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return nodes, weights
    if rule == "riemann_right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "linspace":  # PAIR saliency's convention: both ends included, equal weights
        return np.linspace(0, 1, steps), np.full(steps, 1.0 / steps)
    raise ParameterError(f"unknown rule '{rule}'; use gausslegendre, trapezoid, riemann_right or linspace")


def baseline_for(x: torch.Tensor, kind: str, value_range: tuple[float, float]) -> torch.Tensor:
    """'black' (the low end of the input range), 'white', or 'blur' (a heavily blurred copy)."""
    if kind == "black":
        return torch.full_like(x, value_range[0])
    if kind == "white":
        return torch.full_like(x, value_range[1])
    if kind == "blur":
        return TF.gaussian_blur(x, kernel_size=[61, 61], sigma=[20.0, 20.0])
    raise ParameterError(f"unknown baseline '{kind}'; use black, white or blur")


_shared: ContextVar[dict[tuple, torch.Tensor] | None] = ContextVar("shared_integrals", default=None)


@contextmanager
def shared_integrals() -> Iterator[None]:
    """Within the block, an integral already computed (same model, images, baselines, targets and quadrature) is
    reused: XRAI's low-baseline integral of an image whose darkest pixel is the input range's low end is the `ig`
    method's own (black baseline, same steps), so running both pays for it once."""
    token = _shared.set({})
    try:
        yield
    finally:
        _shared.reset(token)


def _digest(tensor: torch.Tensor) -> bytes:
    return hashlib.blake2b(tensor.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()


def integrated_gradients(handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                         steps: int, rule: str, batch: int, precision: str = "float32") -> torch.Tensor:
    """Signed attributions [B, C, H, W]: (x - baseline) * sum_i w_i d logit / d x at the quadrature nodes.

    Rows with the same image and baseline (one image, several targets) share the forward passes: each extra
    target costs one more backward pass over the same graph. `precision`: 'float32', 'bfloat16' (autocast) or
    'auto' (bfloat16 where the hardware runs it fast). Inside `shared_integrals()`, repeated calls are answered from
    memory."""
    bfloat16 = use_bfloat16(precision, handle.device)
    shared = _shared.get()
    if shared is None:
        return _integrate(handle, x, targets, baseline, steps, rule, batch, bfloat16)
    key = (id(handle.module), tuple(x.shape), _digest(x), _digest(baseline), tuple(targets.tolist()), steps, rule,
           batch, bfloat16)
    if key not in shared:
        shared[key] = _integrate(handle, x, targets, baseline, steps, rule, batch, bfloat16)
    return shared[key].clone()


def _integrate(handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor, steps: int,
               rule: str, batch: int, bfloat16: bool) -> torch.Tensor:
    device = handle.device
    x, baseline, targets = x.to(device), baseline.to(device), targets.to(device)
    nodes, weights = quadrature(steps, rule)
    alphas = torch.tensor(nodes, dtype=x.dtype, device=device)
    w = torch.tensor(weights, dtype=x.dtype, device=device)
    groups = group_rows(x, baseline)  # rows with identical image and baseline; the first one is evaluated
    total = torch.zeros_like(x)
    pairs = [(g, j) for g in range(len(groups)) for j in range(steps)]  # (group, step), `batch` at a time
    batch = chunk_size(batch)  # smaller inside a background job, so that waiting fast work is served sooner
    for start in range(0, len(pairs), batch):
        checkpoint(start, len(pairs))  # no hooks, no graph kept: other jobs may use the model here
        chunk = pairs[start:start + batch]
        members = [groups[g] for g, _ in chunk]
        first = torch.tensor([m[0] for m in members], device=device)
        step = torch.tensor([j for _, j in chunk], device=device)
        a = alphas[step].view(-1, 1, 1, 1)
        inputs = (baseline[first] + a * (x[first] - baseline[first])).requires_grad_(True)
        widest = max(len(m) for m in members)
        with torch.enable_grad():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
                logits = handle.module(inputs).float()
            for position in range(widest):  # one backward per target position within the groups
                valid = torch.tensor([len(m) > position for m in members], device=device)
                rows = torch.tensor([m[min(position, len(m) - 1)] for m in members], device=device)
                scores = target_logits(logits, targets[rows]) * valid
                (grads,) = torch.autograd.grad(scores.sum(), inputs, retain_graph=position < widest - 1)
                total.index_add_(0, rows[valid], (grads * w[step].view(-1, 1, 1, 1))[valid])
    return (x - baseline) * total


@register
class IntegratedGradients(Explainer):
    name = "ig"
    cost = "slow"
    defaults: ClassVar[dict[str, Any]] = {"steps": 32, "rule": "riemann_right", "baseline": "black", "batch": 32,
                                          "precision": "auto"}

    def attribute(self, handle: ModelHandle, x: torch.Tensor, targets: Targets, **params: Any) -> torch.Tensor:
        """Signed attributions [B, C, H, W]."""
        inputs, p = self.prepare(handle, x, targets, params)
        return self._signed(handle, inputs, **p)

    def _signed(self, handle: ModelHandle, inputs: ExplainBatch, *, steps: int, rule: str, baseline: str,
                batch: int, precision: str) -> torch.Tensor:
        base = baseline_for(inputs.x, baseline, handle.card.input.value_range)
        return integrated_gradients(handle, inputs.x, inputs.targets, base, steps, rule, batch, precision)

    def _explain(self, handle: ModelHandle, inputs: ExplainBatch, **params: Any) -> torch.Tensor:
        return self._signed(handle, inputs, **params).abs().sum(1)

    def completeness_gap(self, handle: ModelHandle, x: torch.Tensor, targets: Targets, **params: Any
                         ) -> torch.Tensor:
        """sum(attributions) - (f(x) - f(baseline)) per image: near 0 when the integral is accurate."""
        inputs, p = self.prepare(handle, x, targets, params)
        base = baseline_for(inputs.x, p["baseline"], handle.card.input.value_range)
        attributions = self._signed(handle, inputs, **p)
        with torch.inference_mode():
            difference = (target_logits(handle.module(inputs.x), inputs.targets)
                          - target_logits(handle.module(base), inputs.targets))
        return attributions.sum(dim=(1, 2, 3)) - difference
