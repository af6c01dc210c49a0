"""Train the bundled `demo` classifier (and `demo-shortcut`) on phantom cases generated on the fly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xai_core.models.bundled import MODELS_DIR
from xai_core.models.densenet import build_demo_densenet
from xai_core.phantom import FINDINGS, PHANTOM_VERSION
from xai_core.runtime import pick_device
from xai_core.training.augment import RemovalAugment, RemovalTransform
from xai_core.training.common import (
    PhantomStream,
    auroc_per_label,
    max_f1_thresholds,
    record_model,
    run_training,
)


@dataclass
class ClassifierRecipe:
    """Everything that determines a trained classifier."""

    name: str = "demo"
    steps: int = 1800
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    shortcut: float | None = None
    val_n: int = 1000
    phantom_version: int = PHANTOM_VERSION
    test_n: int = 1000
    architecture: dict[str, Any] = field(default_factory=lambda: {
        "growth_rate": 16, "block_config": [3, 6, 12, 8], "num_init_features": 32})
    # training-time removal augmentation (xai_core/training/augment.py): regions without lesions in-filled, labels
    # kept; None trains on intact images only (the recipe before issue 24)
    removal_augment: dict[str, Any] | None = field(default_factory=lambda: RemovalAugment().as_dict())


def _scores(model: torch.nn.Module, split: str, n: int, recipe: ClassifierRecipe, device: torch.device
            ) -> tuple[np.ndarray, np.ndarray]:
    loader = DataLoader(PhantomStream(split, 0, n, seed=recipe.data_seed, size=recipe.size, shortcut=recipe.shortcut),
                        batch_size=64, num_workers=1)
    ys, ps = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            ps.append(torch.sigmoid(model(batch["x"].to(device))).float().cpu().numpy())
            ys.append(batch["y"].numpy())
    return np.concatenate(ys), np.concatenate(ps)


def evaluate(model: torch.nn.Module, recipe: ClassifierRecipe, device: torch.device) -> dict[str, Any]:
    """Operating points on the val split (max F1), AUROC on the test split (seeds unseen in training)."""
    y_val, p_val = _scores(model, "val", recipe.val_n, recipe, device)
    thresholds = max_f1_thresholds(y_val, p_val)
    y_test, p_test = _scores(model, "test", recipe.test_n, recipe, device)
    auroc = auroc_per_label(y_test, p_test)
    predicted = p_test >= np.array([thresholds[n] for n in FINDINGS])
    tp = (predicted & (y_test > 0)).sum(0)
    f1 = 2 * tp / np.maximum(predicted.sum(0) + y_test.sum(0), 1)
    return {
        "thresholds": thresholds,
        "test_auroc": auroc,
        "test_macro_auroc": float(np.nanmean(list(auroc.values()))),
        "test_f1_at_threshold": {n: float(v) for n, v in zip(FINDINGS, f1, strict=True)},
        "test_prevalence": {n: float(v) for n, v in zip(FINDINGS, y_test.mean(0), strict=True)},
    }


def train_classifier(recipe: ClassifierRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
                     progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    """Train (resuming from the checkpoint if one exists), evaluate, write weights and the manifest entry."""
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    model = build_demo_densenet(len(FINDINGS), **recipe.architecture).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps,
                                                   pct_start=0.15)

    def loader_from(step: int) -> DataLoader:
        augment = RemovalAugment.from_dict(recipe.removal_augment)
        stream = PhantomStream("train", step * recipe.batch, (recipe.steps - step) * recipe.batch,
                               seed=recipe.data_seed, size=recipe.size, shortcut=recipe.shortcut,
                               transform=RemovalTransform(augment, recipe.data_seed) if augment else None)
        return DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)

    def step_loss(batch: dict) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(batch["x"].to(dev)), batch["y"].to(dev))

    train_seconds = run_training(recipe.name, model, optimiser, schedule, loader_from, step_loss, recipe.steps,
                                 asdict(recipe), checkpoint_dir, progress)
    metrics = evaluate(model, recipe, dev)
    data = {
        "train": {"split": "train", "indices": [0, recipe.steps * recipe.batch], "shortcut": recipe.shortcut},
        "val": {"split": "val", "indices": [0, recipe.val_n]},
        "test": {"split": "test", "indices": [0, recipe.test_n]},
    }
    return save_classifier(model, recipe.name, recipe.architecture, recipe.size, asdict(recipe), data, metrics,
                           train_seconds, dev, out_dir)


def save_classifier(model: torch.nn.Module, name: str, architecture: dict[str, Any], size: int,
                    recipe: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any], seconds: float,
                    device: torch.device, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a demo-family classifier's weights and its manifest entry (`evaluate`'s metrics and thresholds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    entry = {
        "family": "classifier",
        "architecture": {"kind": "densenet", **architecture, "num_classes": len(FINDINGS), "in_channels": 1},
        "labels": list(FINDINGS),
        "input": {"channels": 1, "size": size, "value_range": [-1024.0, 1024.0]},
        "seeds": {"init": recipe["seed"], "data": recipe["data_seed"]},
        "data": data,
        **(extra or {}),
        "recipe": recipe,
        "device": str(device),
        "train_seconds": round(seconds, 1),
        "metrics": {k: v for k, v in metrics.items() if k != "thresholds"},
        "thresholds": metrics["thresholds"],
    }
    return record_model(name, weights, entry)
