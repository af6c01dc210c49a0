"""Validation of MAMMI on the output layer, where the answer is known (output neuron k should be named by label k).

Reported per concept set (the run's, and the demo and OpenI sets where they can be built) and per prompt template
(MAMMI's own and two held-out paraphrases that no training text of the bundled VLM contains): the hit rate (a term of
the label among the neuron's concepts), exact-term precision / recall / F1, and a text similarity between the
neuron's top concept and the label that is independent of the VLM under test (`similarity.lexical_similarity`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xai_core.mammi.backends import ImageTextModel
from xai_core.mammi.match import (
    CONCEPT_PROMPT,
    DEFAULT_BETA,
    PROMPT_TEMPLATES,
    NeuronConcepts,
    base_prompt,
    concept_scores,
    select_concepts,
)
from xai_core.mammi.similarity import best_similarity
from xai_core.models.vlm import clinical_term

if TYPE_CHECKING:
    import torch

VALIDATION_SETS = ("demo", "openi")  # the concept sets every output-layer validation also reports


class CachedTexts:
    """A backend whose text embeddings are remembered by string: the validation encodes each (template, term)
    once, however many concept sets share the term, and reuses what the annotation run encoded already."""

    def __init__(self, backend: ImageTextModel) -> None:
        self.backend, self.name, self.image_size = backend, backend.name, backend.image_size
        self._texts: dict[str, np.ndarray] = {}

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.backend.encode_images(pixels)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            self._texts.update(zip(missing, self.backend.encode_texts(missing), strict=True))
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._texts[t] for t in texts])


def label_terms(label: str) -> set[str]:
    """The concept terms that name a label (its name and its clinical phrase)."""
    return {label.replace("_", " ").lower(), clinical_term(label)}


def validate_output_layer(labels: list[str], concepts: list[list[str]],
                          vlm_similarity: list[float] | None = None) -> dict[str, float]:
    """Output neuron k should be named by label k: hit rate, exact-term precision / recall / F1 (means over the
    neurons), the mean lexical similarity of each neuron's top concept to the label's terms (independent of any
    VLM; 0 for a neuron without concepts) and, where given, the mean similarity measured in the VLM's own text
    space (`mean_vlm_similarity`: not independent of the model under test)."""
    hits, precisions, recalls, lexical = [], [], [], []
    for label, assigned in zip(labels, concepts, strict=True):
        truth = label_terms(label)
        matched = truth & set(assigned)
        hits.append(bool(matched))
        precisions.append(len(matched) / len(assigned) if assigned else 0.0)
        recalls.append(len(matched) / len(truth))
        lexical.append(best_similarity(assigned[0], truth) if assigned else 0.0)
    precision, recall = float(np.mean(precisions)), float(np.mean(recalls))
    out = {"hit_rate": float(np.mean(hits)), "precision": precision, "recall": recall,
           "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
           "mean_lexical_similarity": float(np.mean(lexical))}
    if vlm_similarity is not None:
        out["mean_vlm_similarity"] = float(np.mean(vlm_similarity)) if len(vlm_similarity) else 0.0
    return out


def match_neurons(backend: ImageTextModel, neuron_images: list[np.ndarray], terms: list[str],
                  template: str = CONCEPT_PROMPT, beta: float = DEFAULT_BETA) -> list[NeuronConcepts]:
    """Each neuron's concepts by adaptive matching with one prompt template (its base: the template without the
    concept). `neuron_images[k]`: the L2-normalised embeddings of neuron k's representatives [R_k, D]."""
    text = backend.encode_texts([template.format(c) for c in terms] + [base_prompt(template)])
    concepts, base = text[:-1], text[-1]
    return [select_concepts(concept_scores(images, concepts, base), terms, beta) for images in neuron_images]


def template_sensitivity(backend: ImageTextModel, neuron_images: list[np.ndarray], labels: list[str],
                         terms: list[str], templates: tuple[str, ...] = PROMPT_TEMPLATES,
                         beta: float = DEFAULT_BETA) -> dict[str, dict[str, float]]:
    """Per prompt template, the output-layer validation (hit rate, precision, recall, F1, lexical similarity)."""
    return {template: validate_output_layer(labels, [n.concepts for n in match_neurons(backend, neuron_images, terms,
                                                                                         template, beta)])
            for template in templates}


def validate_concept_sets(backend: ImageTextModel, neuron_images: list[np.ndarray], labels: list[str],
                          concept_sets: dict[str, list[str]], templates: tuple[str, ...] = PROMPT_TEMPLATES,
                          beta: float = DEFAULT_BETA) -> dict[str, dict]:
    """Per concept set: its size, how many labels it can name at all (a term of the label is in the set: the
    highest reachable hit rate is this over the label count), the validation with MAMMI's template (the first)
    and the hit rate with each template."""
    out = {}
    for name, terms in concept_sets.items():
        per_template = template_sensitivity(backend, neuron_images, labels, list(terms), templates, beta)
        out[name] = {"terms": len(terms),
                     "labels_in_set": sum(bool(label_terms(label) & set(terms)) for label in labels),
                     **per_template[templates[0]],
                     "templates": {template: result["hit_rate"] for template, result in per_template.items()}}
    return out
