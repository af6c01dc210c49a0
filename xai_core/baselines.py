"""The baseline self-check: does a model read an image with its information removed as "no finding"?

Removal-based explanation metrics (deletion / insertion curves, faithfulness correlation) and NEMt's deletion
objective assume that removing evidence lowers the target score. A model that reads the removal baseline itself as
disease breaks them: the metric then carries no signal for that finding. The check runs the model on held-out
phantom cases (a seed no training or manifest metric used) after each removal recipe and reports, per finding and
pooled, the share of negative (case, finding) pairs that the removal pushes over the model's operating point.

Recipes (sizes given at 256 px and scaled to the model's input; `kind` decides the bar):
- global: `mean` (whole image -> its mean), `blur` (Gaussian, sigma 12 px), `blur_noise` (sigma 4 px plus noise of
  5% of the value range), `road` (whole image removed by noisy linear imputation: its mean plus noise);
- local: `local_blur` and `local_road` (a central square of half the image side in-filled with the image's own blur
  or with noisy linear imputation);
- constant: `zero` (every pixel mid-grey, 0 in the demo range [-1024, 1024]: the legacy removal baseline) and
  `constant_-600` (-600 in the demo range: NEMt's old fill); one image each, so their share is 0 or 1 per finding,
  with the probability reported.
Bars: share pushed over <= 0.05 for global recipes, <= 0.10 for local ones; a constant image must read negative
for every finding (probability under the operating point).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from xai_core import removal
from xai_core.models import InputSpec, load_model
from xai_core.models.cards import to_model_range
from xai_core.phantom import FINDINGS, generate_case

HELD_OUT_SPLIT = "test"
# test seed 0 holds the manifest's metrics (0..999) and the bundled-model tests (2000..2399). Seed 7 is held out from
# training, but the augmentation recipes were chosen while looking at it: figures reported as held-out use
# REPORT_SEED, which no recipe choice looked at (benchmarks/testbed.py, docs/testbed.md)
HELD_OUT_SEED = 7
REPORT_SEED = 11
BARS = {"global": 0.05, "constant": 0.05, "local": 0.10}
# which check recipe is the fully-removed baseline of each removal method (deletion's end, insertion's start)
METHOD_BASELINE = {"road": "road", "blur": "blur", "mean": "mean", "constant": "zero"}


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "global" | "local" | "constant"
    description: str
    apply: Callable[[torch.Tensor, tuple[float, float]], torch.Tensor]


def _scaled(px_at_256: float, size: int) -> float:
    return px_at_256 * size / 256


def _central_square(x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-1]
    mask = torch.zeros((1, 1, size, size), dtype=x.dtype)
    mask[..., size // 4: size - size // 4, size // 4: size - size // 4] = 1
    return mask


def _recipes() -> list[Recipe]:
    def whole(method: str, **params: Any) -> Callable[[torch.Tensor, tuple[float, float]], torch.Tensor]:
        def apply(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
            p = {k: (_scaled(v, x.shape[-1]) if k == "sigma" else v) for k, v in params.items()}
            return removal.fully_removed(x, method, value_range=value_range, seed=0, **p)
        return apply

    def local(method: str, **params: Any) -> Callable[[torch.Tensor, tuple[float, float]], torch.Tensor]:
        def apply(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
            p = {k: (_scaled(v, x.shape[-1]) if k == "sigma" else v) for k, v in params.items()}
            return removal.remove(x, _central_square(x), method, value_range=value_range, seed=0, **p)
        return apply

    def flat(pixel: float) -> Callable[[torch.Tensor, tuple[float, float]], torch.Tensor]:
        # a pixel value in [0, 1], mapped to the model's range
        return lambda x, value_range: torch.full_like(x, value_range[0] + pixel * (value_range[1] - value_range[0]))

    return [
        Recipe("mean", "global", "every pixel -> the image's mean", whole("mean")),
        Recipe("blur", "global", "Gaussian blur, sigma 12 px at 256", whole("blur", sigma=12.0)),
        Recipe("blur_noise", "global", "Gaussian blur sigma 4 px at 256 + noise 5% of the range",
               whole("blur", sigma=4.0, noise=0.05)),
        Recipe("road", "global", "noisy linear imputation of the whole image (its mean + noise 1%)", whole("road")),
        Recipe("local_blur", "local", "central square (half the side) -> its own blur, sigma 12 px at 256",
               local("blur", sigma=12.0)),
        Recipe("local_road", "local", "central square (half the side) -> noisy linear imputation", local("road")),
        Recipe("zero", "constant", "constant mid-grey (0 in the demo range [-1024, 1024])", flat(0.5)),
        Recipe("constant_-600", "constant", "constant pixel 0.207 (-600 in the demo range)", flat(424 / 2048)),
    ]


RECIPES = {r.name: r for r in _recipes()}


def _more_recipes() -> list[Recipe]:
    """Removals that training's augmentation never draws exactly (other operators, sizes, shapes): a check that
    the model's reading of removed evidence generalises. Not part of the default self-check."""
    def inpaint_centre(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        lo, hi = value_range
        mask = _central_square(x)[0, 0].numpy().astype(np.uint8)
        out = []
        for image in x[:, 0].numpy():
            u8 = np.clip((image - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
            filled = cv2.inpaint(u8, mask, 5, cv2.INPAINT_TELEA).astype(np.float32) / 255 * (hi - lo) + lo
            out.append(np.where(mask > 0, filled, image))
        return torch.from_numpy(np.stack(out))[:, None].to(x.dtype)

    def lungs_band(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        size = x.shape[-1]
        mask = torch.zeros((1, 1, size, size), dtype=x.dtype)
        mask[..., int(0.55 * size):int(0.8 * size), :] = 1  # a basal band across both lungs
        return removal.road(x, mask, value_range=value_range, seed=1)

    def local_mean(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        return removal.mean(x, _central_square(x), value_range=value_range)

    def blur_heavy_noise(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        return removal.fully_removed(x, "blur", value_range=value_range, seed=2, sigma=_scaled(20, x.shape[-1]),
                                     noise=0.02)

    return [
        Recipe("blur20_noise", "global", "Gaussian blur sigma 20 px at 256 + noise 2% of the range", blur_heavy_noise),
        Recipe("local_inpaint", "local", "central square -> OpenCV Telea inpainting (radius 5)", inpaint_centre),
        Recipe("basal_road", "local", "a basal band (rows 55-80%) -> noisy linear imputation", lungs_band),
        Recipe("local_mean", "local", "central square -> the image's mean (a flat patch: never trained)", local_mean),
    ]


MORE_RECIPES = {r.name: r for r in _more_recipes()}


def _held_out_batch(spec: InputSpec, n: int, split: str, seed: int, labels: list[str]
                    ) -> tuple[torch.Tensor, np.ndarray]:
    images, truth = [], []
    for index in range(n):
        case = generate_case(split, index, seed=seed, size=spec.size)
        images.append(case.image)
        truth.append([name in case.labels for name in labels])
    return torch.from_numpy(to_model_range(np.stack(images), spec)), np.asarray(truth, bool)


def _probabilities(handle: Any, x: torch.Tensor, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            out.append(torch.sigmoid(handle.module(x[start:start + batch].to(handle.device))).float().cpu())
    return torch.cat(out).numpy()


def _shares(p: np.ndarray, p_clean: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    negatives = ~truth
    over = (p >= thresholds) & negatives
    pushed = over & (p_clean < thresholds)
    positives_kept = (p >= thresholds) & truth
    n_neg, n_pos = negatives.sum(0), truth.sum(0)
    return {
        "negatives": n_neg, "positives": n_pos,
        "over": over.sum(0), "pushed": pushed.sum(0), "positives_over": positives_kept.sum(0),
        "mean_probability_negatives": np.where(n_neg > 0, (p * negatives).sum(0) / np.maximum(n_neg, 1), np.nan),
    }


def check_baselines(handle: Any, *, n: int = 200, split: str = HELD_OUT_SPLIT, seed: int = HELD_OUT_SEED,
                    recipes: list[str] | None = None, batch: int = 50) -> dict[str, Any]:
    """Per removal recipe, per finding and pooled: the share of negative (case, finding) pairs pushed over the
    operating point (`pushed`: under it on the intact image, over it after the removal), the share over it after
    the removal whatever the intact score (`over`), the mean probability on negatives, and the share of positives
    still over (`positives_over`, informative only: a global removal may remove a finding's evidence). `passes` per
    recipe compares pooled and per-finding `pushed` with the recipe's bar (a constant image: its probability with
    the operating point, per finding); `reads_positive` names the findings that fail. Deterministic (fixed cases
    and seeds)."""
    labels = [label for label in handle.card.labels if label in FINDINGS]
    index = [handle.card.labels.index(label) for label in labels]
    thresholds = np.array([handle.card.thresholds.get(label, 0.5) for label in labels])
    spec = handle.card.input
    x, truth = _held_out_batch(spec, n, split, seed, labels)
    value_range = tuple(float(v) for v in spec.value_range)
    p_clean = _probabilities(handle, x, batch)[:, index]
    clean = _shares(p_clean, p_clean, truth, thresholds)
    result: dict[str, Any] = {
        "model": handle.card.name,
        "data": {"split": split, "seed": seed, "indices": [0, n], "size": spec.size},
        "thresholds": dict(zip(labels, thresholds.tolist(), strict=True)),
        # labels the phantom has no ground truth for (e.g. an xrv model's Edema): never checked, never invalidated
        "unchecked": [label for label in handle.card.labels if label not in FINDINGS],
        "bars": dict(BARS),
        "clean": {"false_positive_rate": _per_finding(labels, clean["over"], clean["negatives"]),
                  "sensitivity": _per_finding(labels, clean["positives_over"], clean["positives"])},
        "recipes": {},
    }
    for name in recipes or list(RECIPES):
        recipe = RECIPES[name] if name in RECIPES else MORE_RECIPES[name]
        removed = recipe.apply(x, value_range)
        p = _probabilities(handle, removed, batch)[:, index]
        s = _shares(p, p_clean, truth, thresholds)
        bar = BARS[recipe.kind]
        pushed = _per_finding(labels, s["pushed"], s["negatives"])
        pooled_pushed = float(s["pushed"].sum() / max(s["negatives"].sum(), 1))
        entry: dict[str, Any] = {
            "kind": recipe.kind, "description": recipe.description, "bar": bar,
            "pushed": pushed, "pushed_pooled": pooled_pushed,
            "over": _per_finding(labels, s["over"], s["negatives"]),
            "over_pooled": float(s["over"].sum() / max(s["negatives"].sum(), 1)),
            "mean_probability_negatives": dict(zip(labels, s["mean_probability_negatives"].tolist(), strict=True)),
            "positives_over": _per_finding(labels, s["positives_over"], s["positives"]),
            "negatives": dict(zip(labels, s["negatives"].tolist(), strict=True)),
        }
        if recipe.kind == "constant":  # one image: it reads positive where its probability is over the threshold
            entry["probability"] = dict(zip(labels, p[0].tolist(), strict=True))
            entry["reads_positive"] = [label for label, q, t in zip(labels, p[0], thresholds, strict=True) if q >= t]
        else:
            entry["reads_positive"] = [label for label, share in pushed.items() if share is not None and share > bar]
        entry["passes"] = pooled_pushed <= bar and not entry["reads_positive"]
        result["recipes"][name] = entry
    result["passes"] = all(entry["passes"] for entry in result["recipes"].values())
    return result


def _per_finding(labels: list[str], count: np.ndarray, total: np.ndarray) -> dict[str, float | None]:
    return {label: (float(c / t) if t > 0 else None) for label, c, t in zip(labels, count, total, strict=True)}


def invalid_findings(check: dict[str, Any], method: str) -> list[str]:
    """Findings whose fully-removed baseline under a removal method reads as positive (pushed share over the bar):
    their removal metrics (deletion, insertion, faithfulness correlation with that method) carry no signal."""
    recipe = check["recipes"].get(METHOD_BASELINE.get(method, method))
    return [] if recipe is None else list(recipe["reads_positive"])


def format_table(check: dict[str, Any]) -> str:
    """A plain-text table: one row per recipe, the pushed share per finding and pooled, and the verdict."""
    labels = list(check["thresholds"])
    short = [label[:6] for label in labels]
    head = f"{'recipe':<14} {'bar':>5} " + " ".join(f"{s:>6}" for s in short) + f" {'pooled':>6}  verdict"
    lines = [f"baseline self-check of {check['model']} on {check['data']['split']} seed {check['data']['seed']} "
             f"cases {check['data']['indices'][0]}..{check['data']['indices'][1] - 1}: share of negative (case, "
             f"finding) pairs pushed over the operating point", head]
    for name, entry in check["recipes"].items():
        cells = " ".join(f"{'-' if entry['pushed'][lab] is None else format(entry['pushed'][lab], '.3f'):>6}"
                         for lab in labels)
        verdict = "ok" if entry["passes"] else "READS POSITIVE: " + ", ".join(entry["reads_positive"] or ["pooled"])
        lines.append(f"{name:<14} {entry['bar']:>5.2f} {cells} {entry['pushed_pooled']:>6.3f}  {verdict}")
    fpr = check["clean"]["false_positive_rate"]
    lines.append(f"{'(intact FPR)':<14} {'':>5} " + " ".join(
        f"{'-' if fpr[lab] is None else format(fpr[lab], '.3f'):>6}" for lab in labels))
    if check.get("unchecked"):
        lines.append("not checked (no phantom ground truth): " + ", ".join(check["unchecked"]))
    return "\n".join(lines)


def run(model: str = "demo", *, n: int = 200, seed: int = HELD_OUT_SEED, device: str = "cpu",
        more: bool = False) -> dict[str, Any]:
    """Load a registered model and check it (the CLI's `check-baselines`; `more`: also MORE_RECIPES)."""
    recipes = [*RECIPES, *MORE_RECIPES] if more else None
    return check_baselines(load_model(model, device), n=n, seed=seed, recipes=recipes)
