"""Train the bundled `demo` classifier (and `demo-shortcut`) on phantom cases generated on the fly."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from xai_core.engine import pick_device
from xai_core.models.densenet import build_demo_densenet
from xai_core.phantom import FINDINGS
from xai_core.training.common import (
    MODELS_DIR,
    Checkpoint,
    PhantomStream,
    auroc_per_label,
    max_f1_thresholds,
    record_model,
)


@dataclass
class ClassifierRecipe:
    """Everything that determines a trained classifier."""

    name: str = "demo"
    steps: int = 900
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    shortcut: float | None = None
    val_n: int = 1000
    test_n: int = 1000
    architecture: dict[str, Any] = field(default_factory=lambda: {
        "growth_rate": 16, "block_config": [3, 6, 12, 8], "num_init_features": 32})


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
    model.train()
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
    checkpoint = Checkpoint(Path(checkpoint_dir) / f"{recipe.name}.ckpt")
    step, elapsed = 0, 0.0
    state = checkpoint.load()
    if state is not None and state["recipe"] == asdict(recipe):
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed = state["step"], state["elapsed"]
    remaining = recipe.steps - step
    stream = PhantomStream("train", step * recipe.batch, remaining * recipe.batch, seed=recipe.data_seed,
                           size=recipe.size, shortcut=recipe.shortcut)
    loader = DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)
    model.train()
    started = time.perf_counter() - elapsed
    bar = tqdm(total=recipe.steps, initial=step, desc=f"train {recipe.name}", unit="step", disable=not progress)
    for batch in loader:
        logits = model(batch["x"].to(dev))
        loss = F.binary_cross_entropy_with_logits(logits, batch["y"].to(dev))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0 or step == recipe.steps:
            checkpoint.save(recipe=asdict(recipe), model=model.state_dict(), optimiser=optimiser.state_dict(),
                            schedule=schedule.state_dict(), step=step, elapsed=time.perf_counter() - started)
    bar.close()
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, recipe, dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{recipe.name}.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    entry = {
        "family": "classifier",
        "architecture": {"kind": "densenet", **recipe.architecture, "num_classes": len(FINDINGS), "in_channels": 1},
        "labels": list(FINDINGS),
        "input": {"channels": 1, "size": recipe.size, "value_range": [-1024.0, 1024.0]},
        "seeds": {"init": recipe.seed, "data": recipe.data_seed},
        "data": {
            "train": {"split": "train", "indices": [0, recipe.steps * recipe.batch], "shortcut": recipe.shortcut},
            "val": {"split": "val", "indices": [0, recipe.val_n]},
            "test": {"split": "test", "indices": [0, recipe.test_n]},
        },
        "recipe": asdict(recipe),
        "device": str(dev),
        "train_seconds": round(train_seconds, 1),
        "metrics": {k: v for k, v in metrics.items() if k != "thresholds"},
        "thresholds": metrics["thresholds"],
    }
    return record_model(recipe.name, weights, entry)
