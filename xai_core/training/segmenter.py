"""Train the bundled `demo-anatomy` U-Net on phantom anatomy masks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xai_core.models.bundled import MODELS_DIR
from xai_core.models.segmenters import UNet
from xai_core.phantom import ANATOMY, PHANTOM_VERSION
from xai_core.runtime import pick_device
from xai_core.training.common import PhantomStream, record_model, run_training


@dataclass
class SegmenterRecipe:
    name: str = "demo-anatomy"
    steps: int = 400
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    test_n: int = 300
    phantom_version: int = PHANTOM_VERSION
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over channels."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    return 1 - ((2 * inter + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)).mean()


def dice_scores(model: torch.nn.Module, recipe: SegmenterRecipe, device: torch.device) -> dict[str, float]:
    """Mean Dice per structure on the test split (seeds unseen in training)."""
    loader = DataLoader(PhantomStream("test", 0, recipe.test_n, seed=recipe.data_seed, size=recipe.size,
                                      with_anatomy=True), batch_size=32, num_workers=1)
    per_image: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:
            pred = (torch.sigmoid(model(batch["x"].to(device))) >= 0.5).float().cpu()
            target = batch["anatomy"]
            i = (pred * target).sum((2, 3))
            t = pred.sum((2, 3)) + target.sum((2, 3))
            per_image.append((2 * i / t.clamp(min=1)).numpy())
    mean = np.concatenate(per_image).mean(0)
    return {name: float(v) for name, v in zip(ANATOMY, mean, strict=True)}


def train_segmenter(recipe: SegmenterRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
                    progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    model = UNet(len(ANATOMY), tuple(recipe.widths)).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps,
                                                   pct_start=0.1)

    def loader_from(step: int) -> DataLoader:
        stream = PhantomStream("train", step * recipe.batch, (recipe.steps - step) * recipe.batch,
                               seed=recipe.data_seed, size=recipe.size, with_anatomy=True)
        return DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)

    def step_loss(batch: dict) -> torch.Tensor:
        logits = model(batch["x"].to(dev))
        target = batch["anatomy"].to(dev)
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)

    seconds = run_training(recipe.name, model, optimiser, schedule, loader_from, step_loss, recipe.steps,
                           asdict(recipe), checkpoint_dir, progress)
    dice = dice_scores(model, recipe, dev)
    weights = out_dir / f"{recipe.name}.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    return record_model(recipe.name, weights, {
        "family": "segmenter",
        "architecture": {"kind": "unet", "widths": recipe.widths},
        "labels": list(ANATOMY),
        "input": {"channels": 1, "size": recipe.size, "value_range": [-1024.0, 1024.0]},
        "seeds": {"init": recipe.seed, "data": recipe.data_seed},
        "data": {"train": {"split": "train", "indices": [0, recipe.steps * recipe.batch]},
                 "test": {"split": "test", "indices": [0, recipe.test_n]}},
        "recipe": asdict(recipe),
        "device": str(dev),
        "train_seconds": round(seconds, 1),
        "metrics": {"test_dice": dice},
    })
