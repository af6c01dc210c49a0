"""MAMMI's output-layer validation that is not circular: every concept set, every prompt template (MAMMI's and two
held-out paraphrases), and a text similarity independent of the VLM under test."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

from xai_core.mammi import similarity
from xai_core.mammi.match import BASE_PROMPT, CONCEPT_PROMPT, HELD_OUT_PROMPTS, PROMPT_TEMPLATES, base_prompt
from xai_core.mammi.similarity import best_similarity, lexical_similarity
from xai_core.mammi.validate import CachedTexts, template_sensitivity, validate_concept_sets

LABELS = ["Effusion", "Nodule", "Cardiomegaly"]
TERMS = ["pleural effusion", "pulmonary nodule", "cardiomegaly", "rib", "trachea"]


class FakeBackend:
    """Text embeddings by rule: under MAMMI's template a concept's embedding is its own axis; under the first
    held-out paraphrase it is the next concept's axis (a VLM that only learnt MAMMI's prompt); under the second it
    is its own axis again. Base prompts sit on an axis of their own."""
    name, image_size = "fake", 8

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        raise AssertionError("the validation works on stored image embeddings")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += texts
        out = np.zeros((len(texts), len(TERMS) + 1), np.float32)
        for row, text in enumerate(texts):
            for template in PROMPT_TEMPLATES:
                prefix = base_prompt(template)
                if text == prefix:
                    out[row, -1] = 1.0
                elif text.startswith(prefix + " "):
                    index = TERMS.index(text[len(prefix) + 1:])
                    shift = 1 if template == HELD_OUT_PROMPTS[0] else 0
                    out[row, (index + shift) % len(TERMS)] = 1.0
        return out


def _neuron_images() -> list[np.ndarray]:
    """Neuron k's representatives all embed on the axis of label k's term."""
    axes = [TERMS.index(t) for t in ("pleural effusion", "pulmonary nodule", "cardiomegaly")]
    return [np.tile(np.eye(len(TERMS) + 1, dtype=np.float32)[axis], (4, 1)) for axis in axes]


def test_template_sensitivity_reports_a_hit_rate_per_template():
    result = template_sensitivity(FakeBackend(), _neuron_images(), LABELS, TERMS)
    assert list(result) == list(PROMPT_TEMPLATES) == [CONCEPT_PROMPT, *HELD_OUT_PROMPTS]
    assert result[CONCEPT_PROMPT]["hit_rate"] == 1.0
    assert result[HELD_OUT_PROMPTS[0]]["hit_rate"] == 0.0, "a VLM that knows only MAMMI's prompt is exposed"
    assert result[HELD_OUT_PROMPTS[1]]["hit_rate"] == 1.0
    for metrics in result.values():
        assert {"hit_rate", "precision", "recall", "f1", "mean_lexical_similarity"} <= set(metrics)
    assert result[CONCEPT_PROMPT]["mean_lexical_similarity"] == 1.0
    assert result[HELD_OUT_PROMPTS[0]]["mean_lexical_similarity"] < 0.5


def test_every_concept_set_is_validated_and_says_which_labels_it_can_name():
    backend = CachedTexts(FakeBackend())
    sets = {"demo": TERMS, "small": ["rib", "trachea", "cardiomegaly"]}
    result = validate_concept_sets(backend, _neuron_images(), LABELS, sets)
    assert result["demo"]["terms"] == 5 and result["demo"]["labels_in_set"] == 3
    assert result["small"]["labels_in_set"] == 1 and result["small"]["hit_rate"] <= 1 / 3
    assert result["demo"]["templates"] == {CONCEPT_PROMPT: 1.0, HELD_OUT_PROMPTS[0]: 0.0, HELD_OUT_PROMPTS[1]: 1.0}
    encoded = backend.backend.calls
    assert len(encoded) == len(set(encoded)), "each prompt is encoded once across sets and templates"
    assert BASE_PROMPT in encoded and all(base_prompt(t) in encoded for t in PROMPT_TEMPLATES)


def test_lexical_similarity_is_one_for_the_same_term_and_synonyms_beat_unrelated_terms():
    for term in ("pleural effusion", "cardiomegaly", "air-space opacity", "rib"):
        assert lexical_similarity(term, term) == 1.0
    assert lexical_similarity("Pleural Effusions", "pleural effusion") == 1.0, "case and plurals"
    unrelated = [("pleural effusion", "rib fracture"), ("nodule", "trachea"), ("cardiomegaly", "pneumothorax"),
                 ("atelectasis", "gastric bubble")]
    for a, b in unrelated:
        assert lexical_similarity(a, b) == 0.0, (a, b)
    synonyms = [("pleural effusion", "pleural fluid"), ("cardiomegaly", "enlarged heart"),
                ("consolidation", "air-space opacity"), ("atelectasis", "collapse"), ("nodule", "pulmonary nodule"),
                ("mass", "lung mass"), ("pneumothorax", "pleural effusion")]
    others = ("rib fracture", "trachea", "gastric bubble", "aortic arch")
    for a, b in synonyms:
        assert lexical_similarity(a, b) > 0.3 > max(lexical_similarity(a, u) for u in others), (a, b)
    assert lexical_similarity("left pleural effusion", "pleural effusion") == 1.0, "sides are not senses"
    assert lexical_similarity("nodule", "spine") == lexical_similarity("spine", "nodule") == 0.0
    assert best_similarity("pleural fluid", {"effusion", "pleural effusion"}) == 1.0
    assert best_similarity("rib", set()) == 0.0


def test_the_lexical_similarity_owes_nothing_to_a_model():
    tree = ast.parse(inspect.getsource(similarity))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "functools", "re", "xai_core.mammi.concepts"}, imported


def test_the_cli_prints_every_concept_set_and_template():
    from xai_core.cli import validation_lines

    per_set = {"terms": 121, "labels_in_set": 7, "hit_rate": 0.71, "precision": 0.4, "recall": 0.7, "f1": 0.5,
               "mean_lexical_similarity": 0.6, "templates": dict.fromkeys(PROMPT_TEMPLATES, 0.5)}
    validation = {"hit_rate": 0.71, "precision": 0.4, "recall": 0.7, "f1": 0.5, "mean_lexical_similarity": 0.6,
                  "mean_vlm_similarity": 0.9, "templates": per_set["templates"],
                  "concept_sets": {"demo": per_set, "openi": {**per_set, "terms": 316}},
                  "concept_sets_skipped": {}}
    lines = validation_lines(validation)
    assert lines[0].startswith("output-layer validation: hit_rate 0.710") and "templates" not in lines[0]
    assert "concept set demo (121 terms" in lines[1] and "concept set openi (316 terms" in lines[2]
    assert all(all(f"'{t}'" in line for t in PROMPT_TEMPLATES) for line in lines[1:])


@pytest.mark.parametrize("template", PROMPT_TEMPLATES)
def test_templates_have_one_slot_and_a_base(template):
    assert template.count("{}") == 1 and template.endswith("{}")
    assert base_prompt(template) and "{" not in base_prompt(template)
