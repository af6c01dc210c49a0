"""Explanation-guided training ("Learning how to MIMIC", Watson et al. 2023) of demo classifiers.

Variants (`MimicRecipe.variant`):
- `discriminator`: the reference's architecture. K classifiers trained jointly; each one's Grad-CAM map for the
  image's target (absolute, min-max normalised, flattened) goes to an MLP that guesses which member made it; the
  members minimise classification loss - beta * discriminator loss (a gradient reversal layer, so one optimiser
  trains the discriminator to tell the members apart and the members to fool it), every `every` steps.
- `gaze`: our addition. One classifier; in training only, beta * KL(gaze heatmap || normalised Grad-CAM) on the
  image's positive finding, since the phantom world has a radiologist-like gaze for every training case. With
  `explanation="occlusion"` the term acts on the input instead, on every film (with or without a finding): beta *
  the occlusion attribution of the region off the reader's path (farther than `path_radius` kernel sigmas from
  every fixation): the mean squared change of the findings' probabilities when that region is removed with the
  product's removal (ROAD's imputation), so that what the reader never came near carries no evidence.
- `control`: the same fine-tune with no explanation term, so that a gain is not the extra training.

The explanation is differentiable in the weights (the Grad-CAM gradients are taken with `create_graph=True`), so
the explanation term reaches the classifiers. The reference's public code computes its maps without that gradient
path, so its discriminator term cannot change the classifiers; ours keeps it (docs/mimic.md).

Inference is unchanged: the bundled model is member 0, a plain classifier.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from xai_core import removal
from xai_core.errors import InputError
from xai_core.metrics.gaze import NOMINAL_SOURCE_PX, gaze_heatmap, reader_path, resolve_gaze_kernel
from xai_core.models import load_model
from xai_core.models.bundled import MODELS_DIR
from xai_core.models.densenet import DenseNetLogits, build_demo_densenet
from xai_core.phantom import FINDINGS, PHANTOM_VERSION, PhantomCase
from xai_core.phantom.gaze import GAZE_VERSION
from xai_core.runtime import pick_device
from xai_core.training.augment import RemovalAugment, RemovalTransform
from xai_core.training.classifier import ClassifierRecipe, evaluate, save_classifier
from xai_core.training.common import PhantomStream, run_training

VARIANTS = ("gaze", "discriminator", "control")
# the training explanation the explanation term acts on: maps at the last feature map (gradcam, hirescam), or the
# occlusion of what lies off the reader's path (the gaze variant only, on every film)
EXPLANATIONS = ("gradcam", "hirescam", "occlusion")
EPS = 1e-7


@dataclass
class MimicRecipe:
    """Everything that determines an explanation-guided classifier."""

    name: str = "demo-mimic"
    variant: str = "gaze"
    # every member starts from this bundled classifier's weights (None: from scratch, the reference's setting; on
    # 2 CPU cores a fine-tune is what fits, docs/mimic.md)
    base: str | None = "demo"
    members: int = 1  # K; the discriminator variant needs at least 2
    # with a base: members after the first start from a fresh classifier layer (seeded per member), so that their
    # maps differ at the start, as the reference's independently initialised members' do
    fresh_heads: bool = True
    steps: int = 300
    batch: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    beta: float = 0.5  # weight of the explanation term
    explanation: str = "gradcam"  # the map the term acts on (EXPLANATIONS)
    every: int = 2  # discriminator: its term on every `every`-th step (the reference: every 2 epochs)
    map_size: int = 56  # grid of the training explanation and gaze heatmaps
    path_radius: float = 2.0  # occlusion: the reader's path, in gaze-kernel sigmas around each fixation
    disc_hidden: int = 128
    seed: int = 0
    data_seed: int = 2  # a stretch of the train split neither the base classifier (0) nor NEMt (1) saw
    size: int = 224
    shortcut: float | None = None
    gaze_kernel: str = "mimic"
    val_n: int = 1000
    test_n: int = 1000
    phantom_version: int = PHANTOM_VERSION
    gaze_version: int = GAZE_VERSION
    architecture: dict[str, Any] = field(default_factory=lambda: {
        "growth_rate": 16, "block_config": [3, 6, 12, 8], "num_init_features": 32})
    removal_augment: dict[str, Any] | None = field(default_factory=lambda: RemovalAugment().as_dict())

    @classmethod
    def starting(cls, base: str | None, **settings: Any) -> MimicRecipe:
        """A recipe whose length and learning rate suit its start when not given: a fine-tune's from `base`, or
        from scratch (None) the bundled classifiers' own (ClassifierRecipe), so a run from scratch is comparable
        with them."""
        if base is None:
            settings.setdefault("steps", ClassifierRecipe.steps)
            settings.setdefault("lr", ClassifierRecipe.lr)
        return cls(base=base, **settings)

    @property
    def acts_on_input(self) -> bool:
        """Whether the explanation term is the occlusion of what lies off the reader's path (else a map at the last
        feature map)."""
        return self.explanation == "occlusion"

    def checked(self) -> MimicRecipe:
        """The recipe, or an InputError saying what is inconsistent."""
        if self.variant not in VARIANTS:
            raise InputError(f"unknown MIMIC variant '{self.variant}'; known: {', '.join(VARIANTS)}")
        if self.explanation not in EXPLANATIONS:
            raise InputError(f"unknown training explanation '{self.explanation}'; known: {', '.join(EXPLANATIONS)}")
        if self.variant == "discriminator" and self.members < 2:
            raise InputError("the discriminator variant needs at least 2 members (--members)")
        if self.path_radius <= 0:
            raise InputError("path_radius must be positive (gaze-kernel sigmas around each fixation)")
        if self.acts_on_input and self.variant != "gaze":
            raise InputError(f"the {self.explanation} explanation is a gaze-variant term (--variant gaze)")
        if self.variant != "discriminator" and self.members != 1:
            raise InputError(f"the {self.variant} variant trains one classifier (--members 1)")
        if self.steps < 1 or self.batch < 1 or self.beta < 0 or self.every < 1:
            raise InputError("steps, batch and every must be positive and beta not negative")
        return self


def differentiable_cam(model: DenseNetLogits, x: torch.Tensor, targets: torch.Tensor, method: str = "gradcam"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, L] and the class-activation maps [B, h, w] at `features.norm5` (the demo card's cam_layer), both
    differentiable in the weights (double backprop).

    `gradcam`: each channel weighted by its spatially averaged gradient (the product's Grad-CAM). `hirescam`: each
    position's activations times their own gradients (Draelos & Carin 2020): under this average-pooled linear head,
    before the ReLU, the map sums to the logit less its bias, each position holding its own share.
    """
    if method not in EXPLANATIONS:
        raise InputError(f"unknown training explanation '{method}'; known: {', '.join(EXPLANATIONS)}")
    activations = model.features(x)
    logits = model.classifier(F.adaptive_avg_pool2d(F.relu(activations), 1).flatten(1)).index_select(1, model.outputs)
    scores = logits.gather(1, targets.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(scores, activations, create_graph=True)
    weights = grads.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else grads
    cam = F.relu((weights * activations).sum(1))
    return logits, cam


def off_path_occlusion(model: DenseNetLogits, x: torch.Tensor, off_path: torch.Tensor, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, L] and, per image [B], the occlusion attribution of the `off_path` pixels ([B, 1, H, W]): the mean
    squared change of the findings' probabilities when those pixels are removed (ROAD's noisy imputation, the
    product's default removal, with the fast solver), differentiable in the weights through both. The films and
    their removed versions go through the model as one batch, so that in training mode batch normalisation uses the
    same statistics for both and the change is the removal's alone."""
    with torch.no_grad():
        removed = removal.remove(x, off_path, removal.DEFAULT_METHOD, seed=seed, **removal.FAST_SOLVER)
    logits, logits_removed = model(torch.cat([x, removed])).split(len(x))
    change = torch.sigmoid(logits_removed) - torch.sigmoid(logits)
    return logits, change.pow(2).mean(1)


def normalised(maps: torch.Tensor) -> torch.Tensor:
    """[B, h, w] -> [B, h*w] min-max normalised per map (the discriminator's input)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return (flat - low) / (high - low + EPS)


def gaze_kl(gaze: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """KL(G || S) per map [B]: the gaze heatmap G against the map S, both normalised to sum 1 (the metric's form)."""
    s = maps.flatten(1).clamp_min(0)
    s = s / (s.sum(1, keepdim=True) + EPS)
    g = gaze.flatten(1)
    return (g * torch.log(EPS + g / (s + EPS))).sum(1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


class Discriminator(nn.Module):
    """An MLP guessing which of K members made a normalised map."""

    def __init__(self, inputs: int, members: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, members))

    def forward(self, maps: torch.Tensor, reverse: float = 0.0) -> torch.Tensor:
        return self.net(_ReverseGradient.apply(maps, reverse) if reverse else maps)


class MimicEnsemble(nn.Module):
    """The members and (for the discriminator variant) the discriminator, as one module for the training loop."""

    def __init__(self, members: list[DenseNetLogits], discriminator: Discriminator | None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.discriminator = discriminator


class GazeTransform:
    """Adds the case's gaze heatmap on the training grid (`gaze` [m, m], sum 1), a deterministic target: one of
    its positive findings (`target`, `has_target`), or a random label for a normal film, and with a `path_radius`
    (kernel sigmas) the pixels off the reader's path (`off_path` [1, H, W], 1 farther than that from every
    fixation)."""

    def __init__(self, map_size: int, kernel: str, seed: int, inner: RemovalTransform | None = None,
                 path_radius: float | None = None) -> None:
        self.map_size, self.kernel, self.seed, self.inner = map_size, kernel, seed, inner
        self.path_radius = path_radius

    def __call__(self, case: PhantomCase, item: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        if self.inner is not None:
            item = self.inner(case, item, split, index)
        size = case.image.shape[0]
        fixations = np.asarray(case.fixations, np.float64)
        points = np.stack([fixations[:, 2], fixations[:, 3], (fixations[:, 1] - fixations[:, 0]) / 1000], 1)
        heat = gaze_heatmap(points, (size, size), kernel=self.kernel, source_px=NOMINAL_SOURCE_PX)
        heat = torch.from_numpy(heat.astype(np.float32))[None, None]
        heat = F.adaptive_avg_pool2d(heat, self.map_size)[0, 0]
        item["gaze"] = heat / heat.sum().clamp_min(EPS)
        if self.path_radius is not None:
            radius = self.path_radius * resolve_gaze_kernel(self.kernel).scaled(size, NOMINAL_SOURCE_PX).sigma
            path = reader_path(points, (size, size), radius)
            # a film without a fixation on it has no path to keep: nothing is off it, and the term leaves it alone
            item["off_path"] = torch.from_numpy(~path if path.any() else path)[None].float()
        digest = hashlib.sha256(f"{self.seed}|{split}|{index}".encode()).digest()
        choice = int.from_bytes(digest[:4], "little")
        positives = [FINDINGS.index(name) for name in case.labels]
        item["target"] = positives[choice % len(positives)] if positives else choice % len(FINDINGS)
        item["has_target"] = bool(positives)
        return item


def initial_members(recipe: MimicRecipe, device: torch.device) -> list[DenseNetLogits]:
    """The K members before training: the base's weights (fresh heads after the first) or seeded random ones."""
    members = []
    for k in range(recipe.members):
        torch.manual_seed(recipe.seed + k)
        model = build_demo_densenet(len(FINDINGS), **recipe.architecture)
        if recipe.base is not None:
            fresh_head = {f"classifier.{k}": v.clone() for k, v in model.classifier.state_dict().items()}
            model.load_state_dict(load_model(recipe.base, "cpu").module.state_dict())
            if k > 0 and recipe.fresh_heads:
                model.load_state_dict(fresh_head, strict=False)
        members.append(model.to(device))
    return members


def mimic_loss(ensemble: MimicEnsemble, batch: dict[str, Any], recipe: MimicRecipe, step: int,
               device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts."""
    x, y = batch["x"].to(device), batch["y"].to(device)
    targets, has_target = batch["target"].to(device), batch["has_target"].to(device)
    parts: dict[str, float] = {}
    total = torch.zeros((), device=device)
    maps = []  # per member: its map [B, m, m], or with the occlusion term its off-path change per film [B]
    for member in ensemble.members:
        if recipe.variant == "control":
            logits, cam = member(x), None
        elif recipe.acts_on_input:
            logits, cam = off_path_occlusion(member, x, batch["off_path"].to(device), recipe.seed * 1_000_003 + step)
        else:
            logits, cam = differentiable_cam(member, x, targets, recipe.explanation)
            cam = F.interpolate(cam.unsqueeze(1), size=(recipe.map_size,) * 2, mode="bilinear",
                                align_corners=False).squeeze(1)
        total = total + F.binary_cross_entropy_with_logits(logits, y)
        maps.append(cam)
    parts["bce"] = float(total.detach()) / len(ensemble.members)
    if recipe.acts_on_input:  # a gaze-variant term (checked), on every film, with or without a finding
        off_path = maps[0].mean()
        total = total + recipe.beta * off_path
        parts["off_path"] = float(off_path.detach())
    elif recipe.variant == "gaze" and has_target.any():
        kl = gaze_kl(batch["gaze"].to(device)[has_target], maps[0][has_target]).mean()
        total = total + recipe.beta * kl
        parts["kl"] = float(kl.detach())
    elif recipe.variant == "discriminator" and ensemble.discriminator is not None and step % recipe.every == 0:
        flat = torch.cat([normalised(m) for m in maps])
        who = torch.arange(len(maps), device=device).repeat_interleave(len(x))
        disc = F.cross_entropy(ensemble.discriminator(flat, reverse=recipe.beta), who)
        total = total + disc  # the discriminator minimises it; the members, through the reversal, maximise it
        parts["disc"] = float(disc.detach())
    return total, parts


def _evaluation_recipe(recipe: MimicRecipe, shortcut: float | None) -> ClassifierRecipe:
    """The classifier evaluation's settings: the base classifiers' val/test cases (data seed 0)."""
    return replace(ClassifierRecipe(), name=recipe.name, val_n=recipe.val_n, test_n=recipe.test_n, data_seed=0,
                   size=recipe.size, shortcut=shortcut)


def train_mimic(recipe: MimicRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
                progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    """Train (resumable), evaluate member 0 as a classifier, write its weights and the manifest entry."""
    recipe.checked()
    dev = pick_device(device)
    members = initial_members(recipe, dev)
    discriminator = None
    if recipe.variant == "discriminator":
        torch.manual_seed(recipe.seed + 1000)
        discriminator = Discriminator(recipe.map_size ** 2, recipe.members, recipe.disc_hidden).to(dev)
    ensemble = MimicEnsemble(members, discriminator)
    optimiser = torch.optim.AdamW(ensemble.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps,
                                                   pct_start=0.1 if recipe.base else 0.15)
    step_counter = {"step": 0}

    def loader_from(step: int) -> DataLoader:
        step_counter["step"] = step
        augment = RemovalAugment.from_dict(recipe.removal_augment)
        inner = RemovalTransform(augment, recipe.data_seed) if augment else None
        stream = PhantomStream("train", step * recipe.batch, (recipe.steps - step) * recipe.batch,
                               seed=recipe.data_seed, size=recipe.size, shortcut=recipe.shortcut,
                               transform=GazeTransform(recipe.map_size, recipe.gaze_kernel, recipe.seed, inner,
                                                       recipe.path_radius if recipe.acts_on_input else None))
        return DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)

    def step_loss(batch: dict) -> torch.Tensor:
        loss, _ = mimic_loss(ensemble, batch, recipe, step_counter["step"], dev)
        step_counter["step"] += 1
        return loss

    seconds = run_training(recipe.name, ensemble, optimiser, schedule, loader_from, step_loss, recipe.steps,
                           asdict(recipe), checkpoint_dir, progress)
    ensemble.eval()
    model = ensemble.members[0]
    metrics = evaluate(model, _evaluation_recipe(recipe, recipe.shortcut), dev)
    if recipe.shortcut is not None:
        independent = evaluate(model, _evaluation_recipe(recipe, 0.0), dev)
        metrics["tag_independent_test_auroc"] = independent["test_auroc"]
        metrics["tag_independent_test_macro_auroc"] = independent["test_macro_auroc"]
    if len(ensemble.members) > 1:
        metrics["member_test_macro_auroc"] = [
            evaluate(m, _evaluation_recipe(recipe, recipe.shortcut), dev)["test_macro_auroc"]
            for m in ensemble.members]
    data = {
        "base": recipe.base,
        "train": {"split": "train", "seed": recipe.data_seed, "indices": [0, recipe.steps * recipe.batch],
                  "shortcut": recipe.shortcut, "gaze": f"phantom gaze simulator v{GAZE_VERSION}"},
        "val": {"split": "val", "seed": 0, "indices": [0, recipe.val_n]},
        "test": {"split": "test", "seed": 0, "indices": [0, recipe.test_n]},
    }
    how = "input, two forward passes" if recipe.acts_on_input else "features.norm5, double backprop"
    mimic = {"variant": recipe.variant, "members": recipe.members, "beta": recipe.beta,
             "explanation": None if recipe.variant == "control" else f"{recipe.explanation}@{how}"}
    return save_classifier(model, recipe.name, recipe.architecture, recipe.size, asdict(recipe), data, metrics,
                           seconds, dev, out_dir, extra={"mimic": mimic})
