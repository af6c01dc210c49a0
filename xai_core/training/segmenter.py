"""Train the bundled U-Net segmenters on phantom masks: `demo-anatomy` (one channel per anatomy structure) and
`demo-lesion` (one class-agnostic channel: the union of every finding's lesion mask, SegU's region)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xai_core.errors import ParameterError
from xai_core.files import finite_json
from xai_core.models.bundled import MODELS_DIR
from xai_core.models.segmenters import UNet
from xai_core.phantom import ANATOMY, FINDINGS, PHANTOM_VERSION, PhantomCase
from xai_core.runtime import pick_device
from xai_core.training.common import PhantomStream, record_model, run_training

TARGETS = {"anatomy": "demo-anatomy", "lesion": "demo-lesion"}  # what a segmenter learns -> its default name
LESION_LABEL = "lesion"
SMALLEST = "Nodule"  # reported on its own: the lesions smaller than the U-Net's half-resolution decoder favours
# recipe fields that differ from the anatomy recipe's by default
TARGET_DEFAULTS: dict[str, dict[str, Any]] = {"anatomy": {}, "lesion": {"steps": 1200}}


@dataclass
class SegmenterRecipe:
    """Everything that determines a trained segmenter; `target` is "anatomy" or "lesion"."""

    name: str = "demo-anatomy"
    target: str = "anatomy"
    steps: int = 400
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    test_n: int = 300
    # the phantom world of the training films: None, tag-free; a strength, the tag world (whose pneumothoraces are
    # treated and fade, phantom.md), so that the segmenter learns faint lesions too (0: tag independent of labels)
    shortcut: float | None = None
    # lesion: a lesion fainter than this (the tag world's treated pneumothoraces carry a `visibility`) is no target,
    # as an annotator draws only what can be seen; tag-free lesions are all at visibility 1
    visible_from: float = 0.1
    phantom_version: int = PHANTOM_VERSION
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ParameterError(f"unknown segmenter target '{self.target}'; use {' or '.join(TARGETS)}")
        if self.shortcut is not None and not 0 <= self.shortcut <= 1:
            raise ParameterError(f"the shortcut strength must lie in [0, 1] (got {self.shortcut})")
        if not 0 <= self.visible_from <= 1:
            raise ParameterError(f"visible_from must lie in [0, 1] (got {self.visible_from})")

    @classmethod
    def for_target(cls, target: str, **overrides: Any) -> SegmenterRecipe:
        """The recipe of a target with its defaults (name, steps), then `overrides` (None values ignored)."""
        if target not in TARGETS:
            raise ParameterError(f"unknown segmenter target '{target}'; use {' or '.join(TARGETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{"name": TARGETS[target], "target": target, **TARGET_DEFAULTS[target], **given})

    @property
    def labels(self) -> list[str]:
        """The output channels' names."""
        return list(ANATOMY) if self.target == "anatomy" else [LESION_LABEL]


def add_lesion_targets(case: PhantomCase, item: dict[str, Any], split: str, index: int, *,
                       parts: bool = False, visible_from: float = 0.0) -> dict[str, Any]:
    """A `PhantomStream` transform: `lesion` [1, H, W], the union of the case's visible lesion masks (every finding;
    a lesion whose `visibility` attribute is below `visible_from` counts as none), and with `parts` each finding's
    own mask as `lesion_parts` [len(FINDINGS), H, W] (bool; empty where absent)."""
    empty = np.zeros(case.image.shape, bool)

    def visible(name: str) -> bool:
        return case.attributes.get(name, {}).get("visibility", 1.0) >= visible_from

    masks = np.stack([case.lesions[name] if name in case.lesions and visible(name) else empty for name in FINDINGS])
    item["lesion"] = torch.from_numpy(masks.any(0)[None].astype(np.float32))
    if parts:
        item["lesion_parts"] = torch.from_numpy(masks)
    return item


def segmenter_stream(recipe: SegmenterRecipe, split: str, start: int, count: int, *,
                     parts: bool = False) -> PhantomStream:
    """Phantom cases of the recipe's world with its target masks (`anatomy` or `lesion`, see
    `add_lesion_targets`)."""
    if recipe.target == "anatomy":
        return PhantomStream(split, start, count, seed=recipe.data_seed, size=recipe.size, shortcut=recipe.shortcut,
                             with_anatomy=True)
    return PhantomStream(split, start, count, seed=recipe.data_seed, size=recipe.size, shortcut=recipe.shortcut,
                         transform=functools.partial(add_lesion_targets, parts=parts,
                                                     visible_from=recipe.visible_from))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over channels."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    return 1 - ((2 * inter + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)).mean()


def dice(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of boolean masks over their last two axes (0 where both are empty)."""
    inter = (predicted & target).sum((-2, -1))
    return 2 * inter / (predicted.sum((-2, -1)) + target.sum((-2, -1))).clamp(min=1)


def _test_batches(model: torch.nn.Module, recipe: SegmenterRecipe, device: torch.device
                  ) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
    """(thresholded prediction [B, C, H, W] bool, batch) over the test split (seeds unseen in training)."""
    loader = DataLoader(segmenter_stream(recipe, "test", 0, recipe.test_n, parts=True), batch_size=32,
                        num_workers=1)
    with torch.inference_mode():
        for batch in loader:
            yield (torch.sigmoid(model(batch["x"].to(device))) >= 0.5).cpu(), batch


def anatomy_dice(predicted: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Dice per image and structure [B, S] of predicted masks against the anatomy targets."""
    return dice(predicted, target > 0.5).numpy()


def lesion_dice(predicted: torch.Tensor, parts: torch.Tensor) -> dict[str, list[float]]:
    """Dice values of one batch of class-agnostic predictions [B, 1, H, W] against each case's lesion masks
    `parts` [B, F, H, W]: `overall` (the union, cases with a lesion), one list per finding present (the prediction
    outside the case's other lesions against the finding's mask), and `false_pixels` of lesion-free cases."""
    out: dict[str, list[float]] = {"overall": [], "false_pixels": [], **{name: [] for name in FINDINGS}}
    union = parts.any(1)
    for b in range(len(predicted)):
        p = predicted[b, 0]
        if not union[b].any():
            out["false_pixels"].append(float(p.sum()))
            continue
        out["overall"].append(float(dice(p, union[b])))
        for f, name in enumerate(FINDINGS):
            if parts[b, f].any():
                others = union[b] & ~parts[b, f]
                out[name].append(float(dice(p & ~others, parts[b, f])))
    return out


def summarise_lesion_dice(values: dict[str, list[float]]) -> dict[str, Any]:
    """The manifest's lesion figures: overall Dice, per finding (mean and n), nodules on their own, every larger
    lesion pooled (`larger_than_nodule`, the bar), and how clean lesion-free cases are."""
    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    larger = [v for name in FINDINGS if name != SMALLEST for v in values[name]]
    false_pixels = values["false_pixels"]
    return {
        "overall": mean(values["overall"]),
        "n_cases_with_lesions": len(values["overall"]),
        "per_finding": {name: {"dice": mean(values[name]), "n": len(values[name])} for name in FINDINGS},
        "nodule": mean(values[SMALLEST]),
        "larger_than_nodule": mean(larger),
        "n_larger_than_nodule": len(larger),
        "lesion_free_cases": {"n": len(false_pixels),
                              "clean_share": mean([float(v == 0) for v in false_pixels]),
                              "mean_false_pixels": mean(false_pixels)},
    }


def dice_scores(model: torch.nn.Module, recipe: SegmenterRecipe, device: torch.device) -> dict[str, Any]:
    """Test-split Dice: mean per anatomy structure, or the lesion figures (`summarise_lesion_dice`)."""
    if recipe.target == "anatomy":
        per_image = [anatomy_dice(pred, batch["anatomy"]) for pred, batch in _test_batches(model, recipe, device)]
        mean = np.concatenate(per_image).mean(0)
        return {name: float(v) for name, v in zip(ANATOMY, mean, strict=True)}
    values: dict[str, list[float]] = {}
    for pred, batch in _test_batches(model, recipe, device):
        for key, found in lesion_dice(pred, batch["lesion_parts"]).items():
            values.setdefault(key, []).extend(found)
    return summarise_lesion_dice(values)


def train_segmenter(recipe: SegmenterRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
                    progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    """Train (resuming from the checkpoint if one exists), measure Dice on test, write weights and the manifest
    entry."""
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    model = UNet(len(recipe.labels), tuple(recipe.widths)).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps,
                                                   pct_start=0.1)

    def loader_from(step: int) -> DataLoader:
        stream = segmenter_stream(recipe, "train", step * recipe.batch, (recipe.steps - step) * recipe.batch)
        return DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)

    def step_loss(batch: dict) -> torch.Tensor:
        logits = model(batch["x"].to(dev))
        target = batch[recipe.target].to(dev)
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)

    seconds = run_training(recipe.name, model, optimiser, schedule, loader_from, step_loss, recipe.steps,
                           asdict(recipe), checkpoint_dir, progress)
    dice_test = dice_scores(model, recipe, dev)
    if recipe.shortcut is not None:  # the bar's world too: tag-free films, every lesion at full contrast (the tag
        # world's figures count a pneumothorax fainter than `visible_from` as no lesion, as its training targets do)
        dice_test = {**dice_scores(model, replace(recipe, shortcut=None), dev),
                     "tag_world": dice_test, "tag_world_shortcut": recipe.shortcut}
    weights = out_dir / f"{recipe.name}.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    masks = "anatomy structures" if recipe.target == "anatomy" else "union of every finding's lesion mask"
    return record_model(recipe.name, weights, {
        "family": "segmenter",
        "target": recipe.target,
        "architecture": {"kind": "unet", "widths": recipe.widths},
        "labels": recipe.labels,
        "input": {"channels": 1, "size": recipe.size, "value_range": [-1024.0, 1024.0]},
        "seeds": {"init": recipe.seed, "data": recipe.data_seed},
        "data": {"train": {"split": "train", "indices": [0, recipe.steps * recipe.batch], "masks": masks,
                           "shortcut": recipe.shortcut},
                 "test": {"split": "test", "indices": [0, recipe.test_n]}},
        "recipe": asdict(recipe),
        "device": str(dev),
        "train_seconds": round(seconds, 1),
        "metrics": {"test_dice": finite_json(dice_test), "mask_threshold": 0.5},
    })
