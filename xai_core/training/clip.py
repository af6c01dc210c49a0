"""Train the bundled `demo-clip` image-text model contrastively on phantom (image, report) pairs."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xai_core.mammi.match import CONCEPT_PROMPT
from xai_core.models.base import ModelHandle
from xai_core.models.bundled import MODELS_DIR
from xai_core.models.vlm import (
    CLINICAL_TERMS,
    DEFAULT_CLIP_ARCHITECTURE,
    PROMPT_FAMILIES,
    build_demo_clip,
    clinical_term,
    clip_card,
    encode_images,
    grey_to_clip_input,
    tokenize,
    zero_shot_scores,
)
from xai_core.phantom import FINDINGS, PHANTOM_VERSION
from xai_core.runtime import pick_device
from xai_core.training.common import PhantomStream, auroc_per_label, record_model, run_training


@dataclass
class ClipRecipe:
    name: str = "demo-clip"
    steps: int = 3000  # 61 min on 2 AVX2 CPU cores; 2000 steps with 30% prompts left MAMMI's hit rate at 0.71
    batch: int = 32
    lr: float = 3e-4
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    test_n: int = 1000
    concept_prompts: float = 0.5  # share of training texts that are a concept prompt naming one present finding
    phantom_version: int = PHANTOM_VERSION
    architecture: dict[str, Any] = field(default_factory=lambda: DEFAULT_CLIP_ARCHITECTURE)


def impression_first(report: str) -> str:
    """'IMPRESSION: ... FINDINGS: ...' so that truncation to the context length never drops the impression."""
    if "IMPRESSION:" not in report:
        return report
    findings, impression = report.split("IMPRESSION:", 1)
    return f"IMPRESSION: {impression.strip()} {findings.strip()}"


def report_view(report: str, case_id: str = "") -> str:
    """A training text for one report: half the time the whole report (impression first), otherwise a random,
    non-empty subset of its sentences, so single statements ("No pulmonary nodule.") are learnt on their own.
    Seeded by the case, so resumed runs see the same texts."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{case_id}|{report}".encode()).hexdigest()[:12], 16))
    if rng.random() < 0.5:
        return impression_first(report)
    sentences = [s.strip() + "." for s in report.replace("FINDINGS:", "").replace("IMPRESSION:", "").split(".")
                 if s.strip()]
    keep = rng.random(len(sentences)) < 0.5
    keep[rng.integers(len(sentences))] = True
    chosen = [sentences[i] for i in rng.permutation(len(sentences)) if keep[i]]
    return " ".join(chosen)


def training_text(report: str, case_id: str, present: list[str], concept_share: float) -> tuple[str, str | None]:
    """One case's training text and the finding it names when it is a concept prompt (else None).

    With probability `concept_share` (cases with a finding only) the text is MAMMI's concept prompt ("A chest x-ray
    image of a {term}") for one present finding, named by its label or its clinical phrase, so the text side learns
    the prompt MAMMI matches neurons with; otherwise a `report_view`. Seeded by the case, like `report_view`."""
    rng = np.random.default_rng(int(hashlib.sha256(f"prompt|{case_id}|{report}".encode()).hexdigest()[:12], 16))
    if present and rng.random() < concept_share:
        finding = present[rng.integers(len(present))]
        terms = sorted({finding.replace("_", " ").lower(), clinical_term(finding)})
        return CONCEPT_PROMPT.format(terms[rng.integers(len(terms))]), finding
    return report_view(report, case_id), None


def contrastive_targets(reports: list[str], present: list[list[str]], named: list[str | None]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets (image -> text, text -> image; rows sum to 1). Image i and report text j match when their
    reports have the same impression (e.g. all normals are positives of each other, not false negatives); image i
    and concept prompt j match when image i has the finding the prompt names."""
    keys = [r.split("IMPRESSION:", 1)[-1].strip() for r in reports]
    match = torch.tensor([[keys[i] == keys[j] if named[j] is None else named[j] in present[i]
                           for j in range(len(keys))] for i in range(len(keys))], dtype=torch.float32)
    return match / match.sum(1, keepdim=True), match.T / match.T.sum(1, keepdim=True)


def _pixels(batch: dict) -> torch.Tensor:
    """Model-range input back to [0, 1] pixels, then the CLIP normalisation."""
    return grey_to_clip_input((batch["x"] + 1024.0) / 2048.0)


def prompt_candidates() -> dict[str, tuple[str, ...]]:
    """Every single prompt family, and all of them averaged."""
    return {**{name: (name,) for name in PROMPT_FAMILIES}, "ensemble": tuple(PROMPT_FAMILIES)}


def zero_shot_aurocs(model: torch.nn.Module, recipe: ClipRecipe, device: torch.device, split: str,
                     candidates: dict[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """Per prompt candidate, the zero-shot AUROC of each finding on `recipe.test_n` cases of `split`."""
    handle = ModelHandle(card=clip_card(recipe.name, {"architecture": recipe.architecture}), module=model,
                         device=device)
    loader = DataLoader(PhantomStream(split, 0, recipe.test_n, seed=recipe.data_seed, size=recipe.size),
                        batch_size=64, num_workers=1)
    ys, embeddings = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            embeddings.append(encode_images(handle, _pixels(batch)))
            ys.append(batch["y"].numpy())
        images, y = torch.cat(embeddings), np.concatenate(ys)
        return {name: auroc_per_label(y, zero_shot_scores(handle, images, list(FINDINGS), families).cpu().numpy())
                for name, families in candidates.items()}


def macro(auroc: dict[str, float]) -> float:
    return float(np.nanmean(list(auroc.values())))


def choose_prompts(model: torch.nn.Module, recipe: ClipRecipe, device: torch.device) -> dict[str, Any]:
    """Pick the prompt candidate with the best validation macro AUROC; test only the chosen one."""
    candidates = prompt_candidates()
    val = {name: macro(auroc) for name, auroc in zero_shot_aurocs(model, recipe, device, "val", candidates).items()}
    chosen = max(val, key=val.get)
    test = zero_shot_aurocs(model, recipe, device, "test", {chosen: candidates[chosen]})[chosen]
    return {"chosen": chosen, "families": list(candidates[chosen]), "val_macro_auroc": val, "test_auroc": test}


def train_clip(recipe: ClipRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
               progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    model = build_demo_clip(recipe.architecture).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps,
                                                   pct_start=0.1)
    context = recipe.architecture["text"]["context_length"]

    def loader_from(step: int) -> DataLoader:
        stream = PhantomStream("train", step * recipe.batch, (recipe.steps - step) * recipe.batch,
                               seed=recipe.data_seed, size=recipe.size, with_report=True)
        return DataLoader(stream, batch_size=recipe.batch, num_workers=1, prefetch_factor=4)

    def step_loss(batch: dict) -> torch.Tensor:
        image = F.normalize(model.encode_image(_pixels(batch).to(dev)), dim=-1)
        present = [[f for f, on in zip(FINDINGS, row, strict=True) if on] for row in batch["y"].tolist()]
        pairs = [training_text(r, i, p, recipe.concept_prompts)
                 for r, i, p in zip(batch["report"], batch["case_id"], present, strict=True)]
        texts, named = [text for text, _ in pairs], [finding for _, finding in pairs]
        words = F.normalize(model.encode_text(tokenize(texts, context).to(dev)), dim=-1)
        logits = model.logit_scale.exp() * image @ words.T
        to_text, to_image = contrastive_targets(batch["report"], present, named)
        return (F.cross_entropy(logits, to_text.to(dev)) + F.cross_entropy(logits.T, to_image.to(dev))) / 2

    seconds = run_training(recipe.name, model, optimiser, schedule, loader_from, step_loss, recipe.steps,
                           asdict(recipe), checkpoint_dir, progress)
    prompts = choose_prompts(model, recipe, dev)
    weights = out_dir / f"{recipe.name}.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu().half() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()},
               weights)  # fp16 on disk (the token embedding alone is 6M values); loaded back as float32
    return record_model(recipe.name, weights, {
        "family": "vlm",
        "architecture": recipe.architecture,
        "labels": list(FINDINGS),
        "input": {"channels": 3, "size": recipe.size, "value_range": [-2.0, 2.0]},
        "prompts": {"families": prompts["families"], "templates": {f: list(PROMPT_FAMILIES[f]) for f in
                                                                   prompts["families"]},
                    "terms": dict(CLINICAL_TERMS), "selected_on": f"val[0:{recipe.test_n}]",
                    "val_macro_auroc": prompts["val_macro_auroc"]},
        "seeds": {"init": recipe.seed, "data": recipe.data_seed},
        "data": {"train": {"split": "train", "indices": [0, recipe.steps * recipe.batch],
                           "text": "report views, concept prompts"},
                 "val": {"split": "val", "indices": [0, recipe.test_n], "use": "prompt choice"},
                 "test": {"split": "test", "indices": [0, recipe.test_n]}},
        "recipe": asdict(recipe),
        "device": str(dev),
        "train_seconds": round(seconds, 1),
        "metrics": {"zero_shot_test_auroc": prompts["test_auroc"],
                    "zero_shot_test_macro_auroc": macro(prompts["test_auroc"])},
    })
