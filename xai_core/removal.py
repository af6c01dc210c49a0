"""Removal operators: take the information out of chosen pixels while keeping the image in the model's distribution.

One module for every perturbation consumer (deletion / insertion curves, faithfulness correlation, NEMt's fill, the
baseline self-check, the classifier's training-time removal augmentation). Pure functions on tensors:

- `x` is [B, C, H, W] (or [C, H, W] / [H, W]) in the model's own value range (the demo family: [-1024, 1024]);
- `mask` is 1 / True where a pixel is REMOVED, 0 where it is kept; boolean or soft in [0, 1]; [B, 1, H, W],
  [B, H, W] or [H, W], broadcast over channels (and the batch). The output is `x * (1 - mask) + fill * mask`, so
  unmasked pixels are unchanged bit for bit and a soft mask blends. `road` computes its fill from the kept pixels
  only (mask < 0.5); `blur` and `mean` from the whole image, removed pixels included (a blurred copy of what was
  there; large findings survive a light blur).

Methods (each has a name, used in results; `describe` gives the name with its parameters):
- `road` (default): ROAD's noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy
  for Attribution Methods"): every removed pixel is the weighted mean of its 8 neighbours (weights 1/6 for the
  4-neighbours, 1/12 for the diagonals, renormalised at the border), which is a sparse linear system over the removed
  pixels with the kept ones as boundary values; then Gaussian noise is added to the removed pixels. The reference
  solves the system with a sparse direct solver per image; here it is solved batched on the tensors' device by
  Jacobi-preconditioned conjugate gradients started from a push-pull pyramid fill (same solution to the tolerance).
  With nothing kept the system has no boundary; the solution is then a constant, taken as the image's mean.
- `blur`: the image's own Gaussian blur (sigma in pixels at the tensor's resolution), optional noise.
- `mean`: the image's mean (per image and channel, over all pixels), optional noise.
- `constant`: a fixed value (the legacy baseline of removal metrics; kept for comparison, not in-distribution).

Noise is given as a fraction of the value range's span (the model's range), and outputs are clipped to that range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_RANGE = (-1024.0, 1024.0)
DEFAULT_METHOD = "road"
METHODS = ("road", "blur", "mean", "constant")
DEFAULTS: dict[str, dict[str, Any]] = {
    "road": {"noise": 0.01},
    "blur": {"sigma": 10.5, "noise": 0.0},  # 10.5 px at 224 = 12 px at 256
    "mean": {"noise": 0.0},
    "constant": {"value": 0.0},
}

# A fixed amount of solver work for callers that impute many images (the removal metrics: 42 images per deletion and
# insertion curve): no tolerance test, so the result never depends on thread counts. Its distance from the exact
# solution, by share removed, is measured in docs/testbed.md (small against ROAD's noise of 0.01 up to 80% removed).
FAST_SOLVER = {"iterations": 40, "coarse_iterations": 40, "tol": 0.0}

# the 8-neighbour weights of ROAD's linear imputation: 1/6 for the 4-neighbours, 1/12 for the diagonals
_EDGE_WEIGHT = 1 / 6
_CORNER_WEIGHT = 1 / 12


def _as_bchw(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """x as [B, C, H, W] and the function that gives a result back in x's original shape."""
    shape = x.shape
    if x.dim() == 2:
        return x[None, None], lambda y: y.reshape(shape)
    if x.dim() == 3:
        return x[None], lambda y: y.reshape(shape)
    if x.dim() == 4:
        return x, lambda y: y
    raise ValueError(f"expected an image tensor [B, C, H, W], [C, H, W] or [H, W]; got shape {tuple(shape)}")


def _mask_b1hw(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The mask as float [B, 1, H, W] on x's device (x already [B, C, H, W])."""
    m = torch.as_tensor(mask, device=x.device)
    m = m.to(x.dtype if x.is_floating_point() else torch.float32)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    elif m.dim() != 4:
        raise ValueError(f"expected a mask [B, 1, H, W], [B, H, W] or [H, W]; got shape {tuple(m.shape)}")
    if m.shape[1] != 1:
        raise ValueError(f"a mask has one channel (it is shared by all of the image's); got shape {tuple(m.shape)}")
    if m.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"mask size {tuple(m.shape[-2:])} does not match the image's {tuple(x.shape[-2:])}")
    if m.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"mask batch {m.shape[0]} does not match the image batch {x.shape[0]}")
    return m.expand(x.shape[0], 1, *x.shape[-2:]).clamp(0, 1)


def _span(value_range: tuple[float, float] | None) -> float:
    return float(value_range[1] - value_range[0]) if value_range is not None else 1.0


def _generator(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _noise(shape: torch.Size, std: float, like: torch.Tensor, seed: int | torch.Generator | None) -> torch.Tensor:
    if std <= 0:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    generator = _generator(seed, like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device) * std


def _finish(x: torch.Tensor, m: torch.Tensor, fill: torch.Tensor, value_range: tuple[float, float] | None
            ) -> torch.Tensor:
    if value_range is not None:
        fill = fill.clamp(value_range[0], value_range[1])
    return torch.where(m > 0, x * (1 - m) + fill * m, x)


# --- building blocks -------------------------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] (reflected border; kernel radius 3 sigma, at most the image size - 1)."""
    if sigma <= 0:
        return x
    radius = min(max(1, math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def _neighbour_sum(z: torch.Tensor) -> torch.Tensor:
    """The ROAD-weighted sum of each pixel's 8 in-image neighbours (zero outside), [B, C, H, W]: shifted adds, which
    on CPU take a fifth of the time of a 3 x 3 float64 convolution and are elementwise (thread-count independent)."""
    p = F.pad(z, (1, 1, 1, 1))
    across = p[..., :-2] + p[..., 2:]  # left + right neighbours, rows -1 .. H
    edges = across[..., 1:-1, :] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1]
    corners = across[..., :-2, :] + across[..., 2:, :]
    return edges.mul_(_EDGE_WEIGHT).add_(corners, alpha=_CORNER_WEIGHT)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image inner products of [B, C, H, W] tensors, [B, 1, 1, 1]."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).view(-1, 1, 1, 1)


def pyramid_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Push-pull fill: the unknown pixels of [B, C, H, W] from mask-weighted averages at coarser scales (a smooth,
    cheap approximation of the linear imputation, and the solver's starting point). `known` is [B, 1, H, W] in
    {0, 1}; an image with no known pixel is filled with its own mean."""
    levels = [(x * known, known)]
    while min(levels[-1][1].shape[-2:]) > 1 and bool((levels[-1][1].amin(dim=(1, 2, 3)) <= 0).any()):
        values, weights = levels[-1]
        levels.append((F.avg_pool2d(values, 2, ceil_mode=True), F.avg_pool2d(weights, 2, ceil_mode=True)))
    values, weights = levels[-1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    coarse = torch.where(weights > 0, values / weights.clamp_min(1e-12), mean)
    for values, weights in reversed(levels[:-1]):
        up = F.interpolate(coarse, size=values.shape[-2:], mode="bilinear", align_corners=False)
        coarse = torch.where(weights > 0, values / weights.clamp_min(1e-12), up)
    return coarse


def _cg(work: torch.Tensor, known: torch.Tensor, start: torch.Tensor, iterations: int, tol: float) -> torch.Tensor:
    """Conjugate gradients (Jacobi preconditioner) for the linear imputation of the pixels where known == 0,
    batched, from `start`, until every image's relative residual is under `tol` (tol 0: exactly `iterations`
    steps); images with nothing known keep `start`."""
    unknown = 1 - known
    weight_sum = _neighbour_sum(torch.ones_like(unknown[:1]))  # 1 inside, less at the border

    def apply(z: torch.Tensor) -> torch.Tensor:  # A z, z supported on the unknown pixels
        return (weight_sum * z).sub_(_neighbour_sum(z)).mul_(unknown)

    rhs = unknown * _neighbour_sum(work * known)
    z = start * unknown
    residual = rhs - apply(z)
    inverse_diagonal = unknown / weight_sum
    prec = inverse_diagonal * residual
    direction = prec.clone()
    rho = _dot(residual, prec)
    # images with nothing kept have a singular system (any constant solves it): they keep the start
    solvable = known.amax(dim=(1, 2, 3), keepdim=True) > 0
    target = tol * rhs.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12)
    active = solvable
    for _ in range(iterations):
        if tol > 0:
            active = solvable & (residual.flatten(1).norm(dim=1).view(-1, 1, 1, 1) > target)
            if not bool(active.any()):
                break
        a_direction = apply(direction)
        alpha = torch.where(active, rho / _dot(direction, a_direction).clamp_min(1e-30), torch.zeros_like(rho))
        z.addcmul_(alpha, direction)
        residual.addcmul_(alpha, a_direction, value=-1)
        torch.mul(inverse_diagonal, residual, out=prec)
        rho_next = _dot(residual, prec)
        beta = torch.where(active, rho_next / rho.clamp_min(1e-30), torch.zeros_like(rho))
        direction.mul_(beta).add_(prec)
        rho = rho_next
    return torch.where(solvable, z, start) * unknown + work * known


def _cascade(work: torch.Tensor, known: torch.Tensor, iterations: int, tol: float, coarse_iterations: int
             ) -> torch.Tensor:
    """Cascadic solve: the same problem at half resolution (recursively) gives the starting point."""
    if min(work.shape[-2:]) < 16 or coarse_iterations <= 0:
        return _cg(work, known, pyramid_fill(work, known), iterations, tol)
    weights = F.avg_pool2d(known, 2, ceil_mode=True)
    values = F.avg_pool2d(work * known, 2, ceil_mode=True) / weights.clamp_min(1e-12)
    coarse_known = (weights >= 0.5).to(work.dtype)
    coarse = _cascade(values * coarse_known, coarse_known, coarse_iterations, 0.0, coarse_iterations)
    start = F.interpolate(coarse, size=work.shape[-2:], mode="bilinear", align_corners=False)
    return _cg(work, known, start, iterations, tol)


def linear_impute(x: torch.Tensor, mask: torch.Tensor, *, iterations: int = 300, tol: float = 1e-4,
                  coarse_iterations: int = 40) -> torch.Tensor:
    """ROAD's linear imputation without noise: solve, for the removed pixels, pixel = weighted mean of its in-image
    8 neighbours, the kept pixels fixed. Batched conjugate gradients (Jacobi preconditioner), started from the same
    problem solved at half resolution (recursively, `coarse_iterations` steps a level), until the relative residual
    is under `tol` for every image or `iterations` ran. An image with nothing kept gets its mean. Returns the full
    image (kept pixels unchanged)."""
    x, back = _as_bchw(x)
    m = _mask_b1hw(mask, x)
    work = x.double() if x.dtype == torch.float64 else x.float()
    known = (m < 0.5).to(work.dtype)
    filled = _cascade(work, known, iterations, tol, coarse_iterations)
    nothing_kept = known.amax(dim=(1, 2, 3), keepdim=True) <= 0
    filled = torch.where(nothing_kept, work.mean(dim=(2, 3), keepdim=True).expand_as(work), filled)
    return back(filled.to(x.dtype))


# --- the removal methods -----------------------------------------------------------------------------------------

def road(x: torch.Tensor, mask: torch.Tensor, *, noise: float = 0.01,
         value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0,
         iterations: int = 300, tol: float = 1e-4, coarse_iterations: int = 40) -> torch.Tensor:
    """ROAD's noisy linear imputation of the removed pixels; noise std = `noise` x the value range's span."""
    x, back = _as_bchw(x)
    m = _mask_b1hw(mask, x)
    fill = linear_impute(x, m, iterations=iterations, tol=tol, coarse_iterations=coarse_iterations)
    fill = fill + _noise(x.shape, noise * _span(value_range), x, seed)
    return back(_finish(x, m, fill, value_range))


def blur(x: torch.Tensor, mask: torch.Tensor, *, sigma: float = 10.5, noise: float = 0.0,
         value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0
         ) -> torch.Tensor:
    """The removed pixels take the image's own Gaussian blur (sigma in pixels), plus optional noise."""
    x, back = _as_bchw(x)
    m = _mask_b1hw(mask, x)
    fill = gaussian_blur(x, sigma) + _noise(x.shape, noise * _span(value_range), x, seed)
    return back(_finish(x, m, fill, value_range))


def mean(x: torch.Tensor, mask: torch.Tensor, *, noise: float = 0.0,
         value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0
         ) -> torch.Tensor:
    """The removed pixels take the image's mean (per image and channel), plus optional noise."""
    x, back = _as_bchw(x)
    m = _mask_b1hw(mask, x)
    fill = x.mean(dim=(2, 3), keepdim=True) + _noise(x.shape, noise * _span(value_range), x, seed)
    return back(_finish(x, m, fill.expand_as(x), value_range))


def constant(x: torch.Tensor, mask: torch.Tensor, *, value: float = 0.0,
             value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0
             ) -> torch.Tensor:
    """The removed pixels take a fixed value (legacy baseline; out of distribution for most models)."""
    x, back = _as_bchw(x)
    m = _mask_b1hw(mask, x)
    return back(_finish(x, m, torch.full_like(x, float(value)), value_range))


_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"road": road, "blur": blur, "mean": mean, "constant": constant}


def params_of(method: str, **params: Any) -> dict[str, Any]:
    """A method's full parameters (its defaults updated by `params`); ValueError for unknown names."""
    if method not in _FUNCTIONS:
        raise ValueError(f"unknown removal '{method}'; expected one of {', '.join(METHODS)}")
    unknown = set(params) - set(DEFAULTS[method]) - {"iterations", "tol", "coarse_iterations"}
    if unknown:
        raise ValueError(f"removal '{method}' takes {', '.join(sorted(DEFAULTS[method]))}; got {', '.join(unknown)}")
    return {**DEFAULTS[method], **params}


def describe(method: str = DEFAULT_METHOD, **params: Any) -> str:
    """The name used in results: the method with its parameters, e.g. 'road(noise=0.01)'."""
    full = {k: v for k, v in params_of(method, **params).items() if k not in ("iterations", "tol", "coarse_iterations")}
    return method + "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in full.items()) + ")"


def remove(x: torch.Tensor, mask: torch.Tensor, method: str = DEFAULT_METHOD, *,
           value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0,
           **params: Any) -> torch.Tensor:
    """Remove the masked pixels of `x` with a named method (see the module docstring); deterministic for a seed."""
    full = params_of(method, **params)
    return _FUNCTIONS[method](x, mask, value_range=value_range, seed=seed, **full)


def fully_removed(x: torch.Tensor, method: str = DEFAULT_METHOD, *,
                  value_range: tuple[float, float] | None = DEFAULT_RANGE, seed: int | torch.Generator | None = 0,
                  **params: Any) -> torch.Tensor:
    """The image with every pixel removed: the end point of a deletion curve, the start of an insertion curve."""
    x4, back = _as_bchw(x)
    ones = torch.ones((x4.shape[0], 1, *x4.shape[-2:]), dtype=x4.dtype, device=x4.device)
    return back(remove(x4, ones, method, value_range=value_range, seed=seed, **params))


def numpy_remover(method: str = DEFAULT_METHOD, *, value_range: tuple[float, float] | None = (0.0, 1.0),
                  seed: int = 0, batch: int = 32, **params: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The removal as a function of numpy arrays, for the metrics: (images [N, H, W], removed [N, H, W] bool or
    [H, W]) -> float32 images [N, H, W] (default range: pixels in [0, 1]; every operator commutes with the affine
    map to the model's range, and noise is a fraction of the span, so this equals removal in the model's space).
    Batches of `batch` images; each call is deterministic (the same seed for every batch)."""
    full = params_of(method, **params)
    # A tolerance test makes the solver's stopping step depend on rounding, so that solve runs in float64 (its step
    # then never depends on how many threads summed a reduction). A fixed amount of work (tol 0, FAST_SOLVER) runs
    # in float32, twice as fast; it differs from float64 by ~1e-5 of the pixel range.
    dtype = np.float32 if full.get("tol", 1.0) == 0 else np.float64

    def apply(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype))
        m = torch.from_numpy(np.ascontiguousarray(removed)).to(x.dtype)
        m = m.expand(x.shape[0], *x.shape[-2:]) if m.dim() == 2 else m
        out = [remove(x[i:i + batch, None], m[i:i + batch, None], method, value_range=value_range, seed=seed, **full)
               for i in range(0, x.shape[0], batch)]
        return torch.cat(out)[:, 0].numpy().astype(np.float32)

    return apply
