"""Shared training plumbing: phantom data streams, checkpoints, the weights manifest, metrics."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from xai_core.models.base import sha256_file
from xai_core.models.bundled import record_entry
from xai_core.models.cards import InputSpec, to_model_range
from xai_core.phantom import ANATOMY, FINDINGS, PhantomCase, generate_case
from xai_core.phantom.text import finding_key


def to_model_input(image: np.ndarray) -> np.ndarray:
    """[0, 1] pixels [..., H, W] -> the demo models' input range (their card's default `InputSpec`: [-1024, 1024],
    the torchxrayvision contract), without a channel axis."""
    return to_model_range(image, InputSpec())[..., 0, :, :]


class PhantomStream(IterableDataset):
    """Cases `start`, `start+1`, ... of a split, generated on the fly (deterministic, sharded over workers).

    `transform(case, item, split, index) -> item`, where given, edits each encoded item (training augmentation; it
    must be deterministic in (split, index) to keep the stream, and so resumed training, reproducible)."""

    def __init__(self, split: str, start: int, count: int, *, seed: int = 0, size: int = 224,
                 shortcut: float | None = None, with_anatomy: bool = False, with_report: bool = False,
                 transform: Callable[[PhantomCase, dict[str, Any], str, int], dict[str, Any]] | None = None) -> None:
        self.split, self.start, self.count, self.seed, self.size = split, start, count, seed, size
        self.shortcut, self.with_anatomy, self.with_report = shortcut, with_anatomy, with_report
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(self.start + worker, self.start + self.count, workers):
            case = generate_case(self.split, index, seed=self.seed, size=self.size, shortcut=self.shortcut)
            item = encode_case(case, self.with_anatomy, self.with_report)
            yield item if self.transform is None else self.transform(case, item, self.split, index)


def encode_case(case: PhantomCase, with_anatomy: bool = False, with_report: bool = False) -> dict[str, Any]:
    """Tensors of one case for training."""
    item: dict[str, Any] = {
        "x": torch.from_numpy(to_model_input(case.image)).unsqueeze(0),
        "y": torch.from_numpy(case.label_vector()),
        "case_id": case.case_id,
    }
    if with_anatomy:
        item["anatomy"] = torch.from_numpy(np.stack([case.anatomy[name] for name in ANATOMY]).astype(np.float32))
    if with_report:
        item["report"] = case.report
        item["finding_key"] = finding_key(case.labels, case.attributes)
    return item


def auroc_per_label(y_true: np.ndarray, scores: np.ndarray, labels: list[str] | tuple[str, ...] = FINDINGS
                    ) -> dict[str, float]:
    """AUROC of each label (NaN where a label has only one class)."""
    out = {}
    for i, name in enumerate(labels):
        column = y_true[:, i]
        out[name] = float(roc_auc_score(column, scores[:, i])) if 0 < column.sum() < len(column) else float("nan")
    return out


def max_f1_thresholds(y_true: np.ndarray, probabilities: np.ndarray, labels=FINDINGS) -> dict[str, float]:
    """Per-label operating point maximising F1 on a validation set."""
    thresholds = {}
    for i, name in enumerate(labels):
        order = np.argsort(-probabilities[:, i])
        sorted_true = y_true[order, i]
        tp = np.cumsum(sorted_true)
        fp = np.cumsum(1 - sorted_true)
        f1 = 2 * tp / np.maximum(2 * tp + fp + (sorted_true.sum() - tp), 1e-9)
        best = int(np.argmax(f1))
        upper = probabilities[order[best], i]
        lower = probabilities[order[best + 1], i] if best + 1 < len(order) else 0.0
        thresholds[name] = float((upper + lower) / 2)
    return thresholds


def record_model(name: str, weights: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Write a model's manifest entry (sha256 of its weights, command, seeds, data, metrics, ...)."""
    record = {
        "file": weights.name,
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "command": "python -m xai_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "trained": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        **entry,
    }
    record_entry(name, record)
    return record


class Checkpoint:
    """Resumable training state in one file (written atomically)."""
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def save(self, **state: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


def run_training(name: str, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LRScheduler, loader_from: Callable[[int], Iterable],
                 step_loss: Callable[[Any], torch.Tensor], steps: int, recipe: dict[str, Any],
                 checkpoint_dir: str | Path, progress: bool = True, every: int = 50) -> float:
    """The shared loop: resume from the checkpoint when its recipe matches, train to `steps`, checkpoint every
    `every` steps; returns the training seconds (including time before a resume)."""
    checkpoint = Checkpoint(Path(checkpoint_dir) / f"{name}.ckpt")
    step, elapsed = 0, 0.0
    state = checkpoint.load()
    if state is not None and state["recipe"] == recipe:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, elapsed = state["step"], state["elapsed"]
    model.train()
    started = time.perf_counter() - elapsed
    bar = tqdm(total=steps, initial=step, desc=f"train {name}", unit="step", disable=not progress)
    for batch in loader_from(step):
        loss = step_loss(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % every == 0 or step == steps:
            checkpoint.save(recipe=recipe, model=model.state_dict(), optimiser=optimiser.state_dict(),
                            schedule=schedule.state_dict(), step=step, elapsed=time.perf_counter() - started)
        if step >= steps:
            break
    bar.close()
    model.eval()
    return time.perf_counter() - started
