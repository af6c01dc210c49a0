"""Train the bundled `demo-clip` image-text model contrastively on phantom (image, report) pairs.

The texts are the phantom reports only (views of one report: all of it, some of its sentences, one sentence). No
prompt template that MAMMI matches or validates with appears in them (`check_training_texts`), so MAMMI's
validation with `demo-clip` does not test the model on the very prompt it was trained on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xai_core.errors import InputError
from xai_core.mammi.match import BASE_PROMPT, CONCEPT_PROMPT, HELD_OUT_PROMPTS, template_fragments
from xai_core.models.base import ModelHandle
from xai_core.models.bundled import MODELS_DIR
from xai_core.models.registry import get_card, load_model
from xai_core.models.vlm import (
    CLINICAL_TERMS,
    DEFAULT_CLIP_ARCHITECTURE,
    PROMPT_FAMILIES,
    build_demo_clip,
    clip_card,
    encode_images,
    grey_to_clip_input,
    tokenize,
    zero_shot_scores,
)
from xai_core.phantom import FINDINGS, PHANTOM_VERSION
from xai_core.phantom.text import contradiction, without_modifiers
from xai_core.runtime import pick_device
from xai_core.training.common import PhantomStream, auroc_per_label, record_model, run_training

# Where the training texts come from: report text of the case, nothing else (recorded in the recipe and manifest).
TEXT_SOURCES = (
    f"phantom report of the case (xai_core.phantom.text, PHANTOM_VERSION {PHANTOM_VERSION}), one view a case:",
    "the whole report, impression first (40%)",
    "a random subset of its sentences (30%)",
    "one of its sentences (30%)",
)
# With `hard_negatives`, the one other text a case gets (also checked by `check_training_texts`).
HARD_NEGATIVE_SOURCE = ("one report sentence false for the case, scored against its film only "
                        "(xai_core.phantom.text.contradiction)")
# Prompt choice and test figures are always on the cases of data seed 0, whatever seed the training stream uses, so
# that every run (a continuation on new films included) is scored on the same films.
EVAL_DATA_SEED = 0
# No training text may contain these: MAMMI's concept and base prompts and the held-out paraphrases it is validated on.
FORBIDDEN_PROMPTS = (CONCEPT_PROMPT, BASE_PROMPT, *HELD_OUT_PROMPTS)


@dataclass
class ClipRecipe:
    name: str = "demo-clip"
    steps: int = 3000  # its time on 2 CPU cores: docs/models.md#demo-clip
    batch: int = 32
    lr: float = 3e-4
    seed: int = 0
    data_seed: int = 0
    size: int = 224
    test_n: int = 1000
    phantom_version: int = PHANTOM_VERSION
    text_sources: list[str] = field(default_factory=lambda: list(TEXT_SOURCES))
    architecture: dict[str, Any] = field(default_factory=lambda: DEFAULT_CLIP_ARCHITECTURE)
    hard_negatives: bool = True  # each film also scored against a sentence that is false for it
    drop_modifiers: float = 0.3  # the share of training texts without their findings' side, zone and severity words
    init: str | None = None  # a bundled image-text model whose weights the run continues from (None: random)

    def checked(self) -> ClipRecipe:
        """The recipe, or an InputError saying what cannot be used."""
        if self.steps < 1 or self.batch < 2:
            raise InputError("a clip run needs at least 1 step and a batch of at least 2")
        if not 0.0 <= self.drop_modifiers <= 1.0:
            raise InputError(f"--drop-modifiers is a share of the texts (0..1), got {self.drop_modifiers}")
        if not self.lr >= 0.0:
            raise InputError(f"the learning rate must be >= 0, got {self.lr}")
        return self


def impression_first(report: str) -> str:
    """'IMPRESSION: ... FINDINGS: ...' so that truncation to the context length never drops the impression."""
    if "IMPRESSION:" not in report:
        return report
    findings, impression = report.split("IMPRESSION:", 1)
    return f"IMPRESSION: {impression.strip()} {findings.strip()}"


SENTENCE_END = re.compile(r"(?<=\.)\s+")  # a full stop and a space: "1.4 cm" and "0.52" are not sentence ends


def report_sentences(report: str) -> list[str]:
    """The sentences of a report, section headers dropped."""
    text = report.replace("FINDINGS:", " ").replace("IMPRESSION:", " ")
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def report_view(report: str, case_id: str = "") -> str:
    """A training text for one report: 40% the whole report (impression first), 30% a random, non-empty subset of
    its sentences, 30% one sentence, so single statements ("No pulmonary nodule.") are learnt on their own and
    long reports are seen past the context length. Seeded by the case, so resumed runs see the same texts."""
    rng = text_rng(case_id, report)
    draw = rng.random()
    if draw < 0.4:
        return impression_first(report)
    sentences = report_sentences(report)
    if draw < 0.7:
        keep = rng.random(len(sentences)) < 0.5
        keep[rng.integers(len(sentences))] = True
        return " ".join(sentences[i] for i in rng.permutation(len(sentences)) if keep[i])
    return sentences[int(rng.integers(len(sentences)))]


def training_text(report: str, case_id: str, drop_modifiers: float = 0.0) -> str:
    """The training text of one case: a view of its report (`report_view`), the modifiers of its findings left out
    with probability `drop_modifiers` (`xai_core.phantom.text.without_modifiers`), checked by
    `check_training_texts`."""
    text = report_view(report, case_id)
    if drops_modifiers(case_id, drop_modifiers):
        text = without_modifiers(text)
    check_training_texts([text])
    return text


def text_rng(*parts: str) -> np.random.Generator:
    """A generator seeded by what a text is drawn for (a case, what it draws), so resumed runs see the same texts."""
    return np.random.default_rng(int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:12], 16))


def drops_modifiers(case_id: str, rate: float) -> bool:
    """Whether the case's training text is the one without its findings' modifiers (drawn with probability `rate`)."""
    return bool(rate) and text_rng("modifiers", case_id).random() < rate


def key_labels(key: str) -> list[str]:
    """The findings of a `finding_key` ("Effusion:left|Nodule:right" -> ["Effusion", "Nodule"])."""
    return [part.split(":", 1)[0] for part in key.split("|") if part]


def hard_negative(key: str, case_id: str) -> str:
    """The hard-negative text of one case: a report sentence false for its findings (`contradiction`), checked by
    `check_training_texts`."""
    text = contradiction(text_rng("contradiction", case_id), key_labels(key))
    check_training_texts([text])
    return text


def prompt_leaks(texts: Iterable[str], templates: Iterable[str] = FORBIDDEN_PROMPTS) -> list[tuple[str, str]]:
    """(text, template) for every text that contains a literal part of a template (case and spacing ignored)."""
    fragments = [(template, fragment) for template in templates for fragment in template_fragments(template)]
    leaks = []
    for text in texts:
        flat = " ".join(text.lower().split())
        leaks += [(text, template) for template, fragment in fragments if fragment in flat]
    return leaks


def check_training_texts(texts: Iterable[str], templates: Iterable[str] = FORBIDDEN_PROMPTS) -> None:
    """ValueError when a training text contains a MAMMI prompt template or a held-out paraphrase of it."""
    leaks = prompt_leaks(texts, templates)
    if leaks:
        text, template = leaks[0]
        raise ValueError(f"{len(leaks)} training text(s) contain a held-out prompt, e.g. '{template}' in '{text}'")


def contrastive_loss(image: torch.Tensor, words: torch.Tensor, keys: list[str], scale: torch.Tensor,
                     false_words: torch.Tensor | None = None, sideless: list[bool] | None = None) -> torch.Tensor:
    """Symmetric soft-target InfoNCE on unit embeddings, targets by `contrastive_targets`. With `false_words` (one a
    film, [B, D]), each film's image-to-text softmax also holds its own false sentence, as a column it must not pick
    (NegCLIP's hard negatives, restricted to the film it contradicts: a sentence false for one film is true for many
    others)."""
    logits = scale * image @ words.T
    to_text, to_image = contrastive_targets(keys, sideless)
    to_text, to_image = to_text.to(logits.device), to_image.to(logits.device)
    image_logits = logits
    if false_words is not None:
        image_logits = torch.cat([logits, scale * (image * false_words).sum(-1, keepdim=True)], dim=1)
        to_text = torch.cat([to_text, torch.zeros_like(to_text[:, :1])], dim=1)
    return (F.cross_entropy(image_logits, to_text) + F.cross_entropy(logits.T, to_image)) / 2


def contrastive_targets(keys: list[str], sideless: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets (image -> text, text -> image; rows sum to 1). Image i and text j match when their cases have
    the same findings on the same sides (`xai_core.phantom.text.finding_key`), however the reports word them: all
    normals are positives of each other, not false negatives. A text marked `sideless` (its modifiers left out)
    matches every image with its findings, on whichever side."""
    sideless = sideless or [False] * len(keys)
    findings = [key_labels(key) for key in keys]
    match = torch.tensor([[findings[i] == findings[j] if sideless[j] else keys[i] == keys[j]
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
    loader = DataLoader(PhantomStream(split, 0, recipe.test_n, seed=EVAL_DATA_SEED, size=recipe.size),
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


def initial_weights(recipe: ClipRecipe) -> dict[str, Any] | None:
    """The weights `recipe.init` names (state, sha256, the command that made them and what that run started from),
    read before anything is written (a run may overwrite the very file it continues from); None for a run from
    random weights. Its architecture must be the recipe's."""
    if recipe.init is None:
        return None
    card = get_card(recipe.init)
    if card.family != "vlm":
        raise InputError(f"--init '{recipe.init}' is a {card.family} model, not an image-text model")
    if card.provenance.get("architecture") != recipe.architecture:
        raise InputError(f"--init '{recipe.init}' has another architecture than the recipe's")
    handle = load_model(recipe.init, "cpu")
    return {"state": handle.module.state_dict(),
            "sha256": handle.card.provenance.get("weights_sha256"),
            "command": handle.card.provenance.get("command"), "init": handle.card.provenance.get("init")}


def train_clip(recipe: ClipRecipe, *, device: str = "auto", checkpoint_dir: str | Path = "runs",
               progress: bool = True, out_dir: Path = MODELS_DIR) -> dict[str, Any]:
    recipe.checked()
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    start = initial_weights(recipe)
    model = build_demo_clip(recipe.architecture).to(dev)
    if start is not None:
        model.load_state_dict(start.pop("state"))
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
        cases, keys = list(batch["case_id"]), list(batch["finding_key"])
        texts = [training_text(report, case, recipe.drop_modifiers)
                 for report, case in zip(batch["report"], cases, strict=True)]
        if recipe.hard_negatives:
            texts += [hard_negative(key, case) for key, case in zip(keys, cases, strict=True)]
        embedded = F.normalize(model.encode_text(tokenize(texts, context).to(dev)), dim=-1)
        words, false_words = embedded[:len(keys)], (embedded[len(keys):] if recipe.hard_negatives else None)
        sideless = [drops_modifiers(case, recipe.drop_modifiers) for case in cases]
        return contrastive_loss(image, words, keys, model.logit_scale.exp(), false_words, sideless)

    seconds = run_training(recipe.name, model, optimiser, schedule, loader_from, step_loss, recipe.steps,
                           {**asdict(recipe), "init_sha256": start and start["sha256"]}, checkpoint_dir, progress)
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
        "init": None if start is None else {"model": recipe.init,
                                            **{key: start[key] for key in ("sha256", "command", "init")}},
        "data": {"train": {"split": "train", "indices": [0, recipe.steps * recipe.batch],
                           "text": "report views only", "text_sources": list(recipe.text_sources),
                           "hard_negatives": HARD_NEGATIVE_SOURCE if recipe.hard_negatives else None,
                           "without_modifiers": recipe.drop_modifiers,
                           "held_out_prompts": list(FORBIDDEN_PROMPTS)},
                 "val": {"split": "val", "indices": [0, recipe.test_n], "seed": EVAL_DATA_SEED,
                         "use": "prompt choice"},
                 "test": {"split": "test", "indices": [0, recipe.test_n], "seed": EVAL_DATA_SEED}},
        "recipe": asdict(recipe),
        "device": str(dev),
        "train_seconds": round(seconds, 1),
        "metrics": {"zero_shot_test_auroc": prompts["test_auroc"],
                    "zero_shot_test_macro_auroc": macro(prompts["test_auroc"])},
    })
