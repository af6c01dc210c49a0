"""Adaptive cosine matching of a neuron's representative images to concept words in an image-text space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONCEPT_PROMPT = "A chest x-ray image of a {}"
BASE_PROMPT = "A chest x-ray image of a"
# Two paraphrases of the concept prompt for the template-sensitivity check. Held out: no training text of a VLM this
# project trains may contain them (xai_core.training.clip.check_training_texts), nor MAMMI's own template.
HELD_OUT_PROMPTS = ("A radiograph showing {}", "Chest film with {}")
PROMPT_TEMPLATES = (CONCEPT_PROMPT, *HELD_OUT_PROMPTS)  # MAMMI's first
DEFAULT_BETA = 0.95
FALLBACK_TOP_K = 3


@dataclass
class NeuronConcepts:
    """The concepts of one neuron, best first, with their summed adaptive scores."""

    concepts: list[str]
    scores: list[float]
    uncertain: bool  # no concept scored above zero: the top-k fallback was used


def base_prompt(template: str) -> str:
    """The template without its concept ("A chest x-ray image of a {}" -> "A chest x-ray image of a")."""
    return " ".join(template.replace("{}", " ").split())


def template_fragments(template: str) -> list[str]:
    """The literal parts of a prompt template, lower case, whitespace collapsed: what a text that uses it contains."""
    return [" ".join(part.lower().split()) for part in template.split("{}") if part.strip()]


def concept_scores(image_embeddings: np.ndarray, concept_embeddings: np.ndarray,
                   base_embedding: np.ndarray) -> np.ndarray:
    """S(c) = sum over images x of cos(x, c) - cos(x, base) for L2-normalised embeddings: [C]."""
    images = np.asarray(image_embeddings, np.float64)
    if images.size == 0:
        return np.zeros(len(concept_embeddings))
    similarity = images @ np.asarray(concept_embeddings, np.float64).T  # [R, C]
    baseline = images @ np.asarray(base_embedding, np.float64)  # [R]
    return (similarity - baseline[:, None]).sum(0)


def select_concepts(scores: np.ndarray, concepts: list[str], beta: float = DEFAULT_BETA,
                    top_k: int = FALLBACK_TOP_K) -> NeuronConcepts:
    """Concepts with S(c) > beta * max S; when max S <= 0, the top-k by score, flagged uncertain."""
    scores = np.asarray(scores, np.float64)
    if len(scores) != len(concepts):
        raise ValueError(f"{len(scores)} scores for {len(concepts)} concepts")
    order = np.argsort(-scores, kind="stable")
    best = scores[order[0]] if len(order) else 0.0
    if best > 0:
        keep = [i for i in order if scores[i] > beta * best]
        uncertain = False
    else:
        keep = list(order[:top_k])
        uncertain = True
    return NeuronConcepts([concepts[i] for i in keep], [float(scores[i]) for i in keep], uncertain)


def margin_percent(beta: float) -> float:
    """How far below the best concept's score (in percent of it) the other concepts of a neuron may be."""
    return round(100.0 * (1.0 - float(beta)), 6)
