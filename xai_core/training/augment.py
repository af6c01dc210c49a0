"""Training-time removal augmentation: in-fill regions that hold no lesion, keep the labels.

Why: a classifier trained only on intact radiographs reads an image with its information removed (mean fill, blur,
imputation, a constant) as disease, which voids every removal-based explanation metric (deletion / insertion,
faithfulness correlation) and NEMt's deletion objective. Here a share of the training images has regions replaced
by the removal operators of `xai_core.removal` (noisy linear imputation, blur with or without noise, mean, a
constant) or by healthy texture, at random sizes and shapes, from a small patch up to everything outside the
lesions. Pixels of a lesion (the phantom's lesion masks, dilated by a margin) are never touched, so every label
stays true: a positive keeps its evidence, a negative stays negative. Fills that ignore the anatomy (mean, a
constant, noise) only replace everything outside the lesions: a local patch of them would be an opacity, i.e. look
like a lesion while labelled negative (the first retraining did that and lost Nodule and Consolidation AUROC).

Every draw comes from a random stream keyed by (seed, split, index), so the data stream stays deterministic and
training stays resumable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

from xai_core import removal
from xai_core.phantom import PhantomCase, generate_case
from xai_core.training.common import to_model_input

REGIONS = ("whole", "boxes", "ellipses", "blobs", "scatter")
FILLS = ("road", "blur", "blur_noise", "mean", "constant", "texture", "noise")
# fills that do not follow the surrounding anatomy: a patch of them inside a lung is an opacity (it looks like a
# nodule or a consolidation), so they only ever replace everything outside the lesions (region "whole")
GLOBAL_ONLY_FILLS = ("mean", "constant", "noise")
VALUE_RANGE = (-1024.0, 1024.0)
_SPLIT_KEYS = {"train": 1, "val": 2, "test": 3, "samples": 4}


@dataclass(frozen=True)
class RemovalAugment:
    """The recipe of the augmentation (recorded in the classifier's recipe, so it is part of the manifest)."""

    rate: float = 0.3  # share of training images that get a removal
    # over REGIONS. A local in-fill can smear a bright edge (heart, rib, diaphragm) into the lung: a faint opacity
    # labelled negative, which costs Consolidation and Nodule AUROC (docs/testbed.md: the recipes tried)
    region_weights: tuple[float, ...] = (0.5, 0.12, 0.08, 0.12, 0.18)
    fill_weights: tuple[float, ...] = (0.24, 0.16, 0.16, 0.13, 0.13, 0.12, 0.06)  # over FILLS
    protect_px: int = 4  # lesion masks are dilated by this many pixels before they are protected
    soft_rate: float = 0.25  # share of removals whose mask edge is feathered (a soft blend, like NEMt's masks)
    donor_seed_offset: int = 100  # healthy texture comes from train cases of seed data_seed + this
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RemovalAugment | None:
        if values is None:
            return None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def lesion_union(case: PhantomCase) -> np.ndarray:
    """Every pixel that belongs to any lesion of the case (H x W bool)."""
    out = np.zeros(case.image.shape, bool)
    for mask in case.lesions.values():
        out |= mask
    return out


def protected(lesions: np.ndarray, margin: int) -> np.ndarray:
    """The lesion pixels and a margin around them: never in-filled."""
    if margin <= 0 or not lesions.any():
        return lesions.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    return cv2.dilate(lesions.astype(np.uint8), kernel).astype(bool)


def region_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A random region to remove (H x W bool), before the lesions are taken out of it."""
    S = size
    if kind == "whole":
        return np.ones((S, S), bool)
    if kind in ("boxes", "ellipses"):
        out = np.zeros((S, S), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            h, w = (rng.uniform(0.08, 0.9, 2) * S).astype(int) + 1
            if rng.random() < 0.4:  # centred, as in a central local in-fill
                cy, cx = (S / 2 + rng.normal(0, 0.05 * S, 2)).astype(int)
            else:
                cy, cx = rng.integers(0, S, 2)
            if kind == "boxes":
                cv2.rectangle(out, (int(cx - w // 2), int(cy - h // 2)), (int(cx + w // 2), int(cy + h // 2)), 1, -1)
            else:
                cv2.ellipse(out, (int(cx), int(cy)), (int(w // 2), int(h // 2)), float(rng.uniform(0, 180)), 0, 360,
                            1, -1)
        return out.astype(bool)
    if kind == "blobs":  # smooth random regions, as a saliency map's top pixels at some threshold
        sigma = float(rng.uniform(2, 30))
        field = cv2.GaussianBlur(rng.standard_normal((S, S)).astype(np.float32), (0, 0), sigma)
        return field > np.quantile(field, 1 - rng.uniform(0.05, 0.95))
    if kind == "scatter":  # scattered pixels, as a pixel-level attribution's top pixels
        sigma = float(rng.uniform(0, 2))
        field = rng.standard_normal((S, S)).astype(np.float32)
        if sigma > 0.3:
            field = cv2.GaussianBlur(field, (0, 0), sigma)
        return field > np.quantile(field, 1 - rng.uniform(0.05, 0.95))
    raise ValueError(f"unknown region kind '{kind}'")


def _healthy_texture(x: torch.Tensor, donor: PhantomCase, margin: int, rng: np.random.Generator) -> torch.Tensor:
    """The image's own low frequencies plus a healthy donor's high frequencies (vessels, ribs' edges, film grain);
    the donor's lesions (with a margin) contribute nothing."""
    d = torch.from_numpy(to_model_input(donor.image)).view(1, 1, *donor.image.shape).to(x.dtype)
    sigma = float(rng.uniform(2, 6))
    detail = d - removal.gaussian_blur(d, sigma)
    keep = torch.from_numpy(~protected(lesion_union(donor), margin + 4)).to(x.dtype).view_as(d)
    return removal.gaussian_blur(x, float(rng.uniform(6, 20))) + detail * keep


def apply_removal(x: torch.Tensor, lesions: np.ndarray, augment: RemovalAugment, rng: np.random.Generator,
                  donor: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """One removal on one image x [1, H, W] (model range) outside the protected lesion pixels. `donor` is a
    callable returning a PhantomCase (only called for the texture fill). Returns the image and what was done."""
    S = x.shape[-1]
    region = str(rng.choice(REGIONS, p=np.asarray(augment.region_weights) / sum(augment.region_weights)))
    weights = np.asarray(augment.fill_weights, np.float64)
    if region != "whole":  # a local region takes only fills that follow the anatomy around it
        weights = weights * np.array([name not in GLOBAL_ONLY_FILLS for name in FILLS])
    fill = str(rng.choice(FILLS, p=weights / weights.sum()))
    keep = protected(lesions, augment.protect_px)
    mask_np = region_mask(rng, region, S) & ~keep
    mask = torch.from_numpy(mask_np.astype(np.float32)).view(1, 1, S, S)
    if rng.random() < augment.soft_rate:
        mask = removal.gaussian_blur(mask, float(rng.uniform(0.7, 4))) * torch.from_numpy(
            (~keep).astype(np.float32)).view(1, 1, S, S)
    x4 = x.view(1, 1, S, S)
    seed = int(rng.integers(2**31))
    info: dict[str, Any] = {"region": region, "fill": fill, "area": float(mask.mean())}
    if fill == "road":
        out = removal.road(x4, mask, noise=float(rng.uniform(0, 0.03)), value_range=VALUE_RANGE, seed=seed,
                           iterations=20, coarse_iterations=15, tol=1e-3)
    elif fill in ("blur", "blur_noise"):
        noise = float(rng.uniform(0.005, 0.06)) if fill == "blur_noise" else 0.0
        sigma = float(np.exp(rng.uniform(np.log(1.5), np.log(30))))
        out = removal.blur(x4, mask, sigma=sigma, noise=noise, value_range=VALUE_RANGE, seed=seed)
    elif fill == "mean":
        noise = float(rng.uniform(0, 0.05)) if rng.random() < 0.5 else 0.0
        out = removal.mean(x4, mask, noise=noise, value_range=VALUE_RANGE, seed=seed)
    elif fill == "constant":
        value = float(rng.choice([0.0, -1024.0, 1024.0])) if rng.random() < 0.3 else float(rng.uniform(-1024, 1024))
        out = removal.constant(x4, mask, value=value, value_range=VALUE_RANGE)
    elif fill == "noise":  # the image's mean plus strong white noise
        out = removal.mean(x4, mask, noise=float(rng.uniform(0.02, 0.25)), value_range=VALUE_RANGE, seed=seed)
    else:
        texture = _healthy_texture(x4, donor(), augment.protect_px, rng)
        noise = torch.from_numpy(rng.standard_normal((S, S)).astype(np.float32)).view(1, 1, S, S)
        out = (x4 * (1 - mask) + texture * mask + noise * mask * float(rng.uniform(0, 0.02)) * 2048).clamp(*VALUE_RANGE)
    # the protected pixels are exactly the original ones (soft masks are zero there already)
    out = torch.where(torch.from_numpy(keep).view(1, 1, S, S), x4, out)
    return out.view_as(x), info


class RemovalTransform:
    """The PhantomStream transform: with probability `rate`, one removal outside the case's lesions."""

    def __init__(self, augment: RemovalAugment, data_seed: int = 0) -> None:
        self.augment, self.data_seed = augment, data_seed

    def __call__(self, case: PhantomCase, item: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(np.random.SeedSequence(
            [0xA06, self.augment.seed, self.data_seed, _SPLIT_KEYS.get(split, 0), index]))
        if rng.random() >= self.augment.rate:
            return item
        size = case.image.shape[0]

        def donor() -> PhantomCase:
            return generate_case("train", index, seed=self.data_seed + self.augment.donor_seed_offset, size=size)

        item["x"], _ = apply_removal(item["x"], lesion_union(case), self.augment, rng, donor)
        return item
