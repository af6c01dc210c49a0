"""Phantom reports in the language of real ones: truthful to the case, several phrasings per finding, a concept
set of >= 100 terms, and the images, labels and masks untouched by the new text."""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np
import pytest

from xai_core.phantom import FINDINGS, generate_case
from xai_core.phantom.text import IMPRESSION, NEGATIVE, POSITIVE, finding_key, report_sentences

# sha256 over image bytes, labels and lesion masks of train cases 0-29 at 128 px, computed before the reports were
# rewritten (the report is drawn after them from the case's stream and must not change them)
TRAIN30_SHA256 = "b6bb41f96701f7de6df85ae4146f4d7e5b08508c95e9437fa9762e4d3c8a9640"

SIDE_WORDS = {"right", "left", "right-sided", "left-sided"}
ZONE_WORDS = {"upper": {"upper"}, "middle": {"mid", "midlung", "middle"}, "lower": {"lower", "base", "basilar"}}
NEGATION_CUES = {"no", "without", "not", "negative"}
# the words that name each finding (a negation cue followed by one of them negates the finding)
FINDING_WORDS = {
    "Atelectasis": {"atelectasis", "atelectatic"},
    "Cardiomegaly": {"cardiomegaly", "heart", "cardiac", "cardiothoracic", "cardiomediastinal"},
    "Consolidation": {"consolidation", "air-space", "airspace", "infiltrate"},
    "Effusion": {"effusion", "effusions", "fluid", "costophrenic", "blunting"},
    "Mass": {"mass", "masses", "masslike"},
    "Nodule": {"nodule", "nodules", "nodular"},
    "Pneumothorax": {"pneumothorax"},
}
# statements of normality that contradict a present finding even without a negation word
NORMAL_CLAIMS = {
    "Cardiomegaly": ("heart size is normal", "normal heart size", "normal in size", "within normal limits",
                     "normal in size and contour"),
    "Effusion": ("angles are sharp", "sharp costophrenic", "lungs are clear", "clear lungs",
                 "hemidiaphragms are normal", "hemidiaphragms are well defined"),
    "Atelectasis": ("lung volumes are normal", "normal lung volumes", "well inflated", "lungs are clear",
                    "hemidiaphragms are normal", "hemidiaphragms are well defined"),
    "Pneumothorax": ("lung volumes are normal", "normal lung volumes", "well inflated", "lungs are clear"),
    "Consolidation": ("lungs are clear", "clear lungs", "parenchyma is clear"),
    "Mass": ("lungs are clear", "clear lungs", "parenchyma is clear"),
    "Nodule": ("lungs are clear", "clear lungs", "parenchyma is clear"),
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())


def _sentences(report: str) -> list[str]:
    text = report.replace("FINDINGS:", " ").replace("IMPRESSION:", " ")
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


@functools.lru_cache(maxsize=1)
def _single_finding_cases() -> dict[str, list]:
    return {name: [generate_case("train", i, size=96, findings=[name]) for i in range(30)] for name in FINDINGS}


def _heart_clause(sentence: str) -> str:
    """The part of a sentence that is about the heart (the statement "Heart size and pulmonary vascularity are
    within normal limits." is about the heart too)."""
    return sentence.lower() if any(w in _words(sentence) for w in ("heart", "cardiac", "cardiothoracic",
                                                                    "cardiomediastinal")) else ""


@pytest.mark.parametrize("name", FINDINGS)
def test_reports_are_truthful_to_the_case(name):
    for case in _single_finding_cases()[name]:
        attrs = case.attributes[name]
        words = _words(case.report)
        sides = {w.removesuffix("-sided") for w in words if w in SIDE_WORDS}
        if name == "Cardiomegaly":
            assert not sides, case.report
            assert f"{attrs['ctr']:.2f}" in case.report or "cardiothoracic" not in words, "the case's own ratio"
        else:
            assert sides == {attrs["side"]}, (attrs, case.report)
        zones = {zone for zone, vocabulary in ZONE_WORDS.items() if vocabulary & set(words)}
        if name in ("Atelectasis", "Consolidation", "Mass", "Nodule"):
            assert zones == {attrs["zone"]}, (attrs, case.report)
        elif name == "Effusion":
            assert zones <= {"lower"}, case.report
        else:
            assert not zones, case.report
        if name in ("Nodule", "Mass", "Pneumothorax", "Consolidation"):
            mm = round((2 * np.sqrt(attrs["size"] / np.pi) if name == "Consolidation" else attrs["size"]) * 350)
            for number in re.findall(r"(\d+(?:\.\d)?) (mm|cm)\b", case.report):
                value = float(number[0]) * (10 if number[1] == "cm" else 1)
                assert abs(value - mm) <= 1, (attrs, case.report)
        if name in ("Effusion", "Pneumothorax"):
            wrong = {"mild": {"large"}, "severe": {"small"}}.get(attrs["severity"], set())
            assert not wrong & set(words), (attrs, case.report)
        for sentence in _sentences(case.report):
            tokens = _words(sentence)
            cues = [i for i, w in enumerate(tokens) if w in NEGATION_CUES]
            if cues:
                assert not FINDING_WORDS[name] & set(tokens[cues[0]:]), f"{name} negated: {sentence}"
            text = _heart_clause(sentence) if name == "Cardiomegaly" else sentence.lower()
            assert not any(claim in text for claim in NORMAL_CLAIMS[name]), f"{name} present: {sentence}"
        assert name.lower() in case.report.split("IMPRESSION:", 1)[1].lower(), "the impression names the finding"


def test_negations_only_of_absent_findings_in_mixed_cases():
    for i in range(150):
        case = generate_case("train", i, size=64)
        for sentence in _sentences(case.report):
            tokens = _words(sentence)
            cues = [j for j, w in enumerate(tokens) if w in NEGATION_CUES]
            for name in case.labels:
                if cues:
                    assert not FINDING_WORDS[name] & set(tokens[cues[0]:]), (case.labels, sentence)
        if not case.labels:
            assert "no acute cardiopulmonary" in case.report.split("IMPRESSION:", 1)[1].lower()


def _template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{[a-z]+\}", template)
    return re.compile("(?i)^" + ".+?".join(re.escape(part) for part in parts) + "$")


def test_several_phrasings_of_every_finding_are_in_use():
    positive: dict[str, set[str]] = {name: set() for name in FINDINGS}
    negative: dict[str, set[str]] = {name: set() for name in FINDINGS}
    impression: dict[str, set[str]] = {name: set() for name in FINDINGS}
    for i in range(200):
        case = generate_case("train", i, size=64)
        sentences = _sentences(case.report)
        for name in FINDINGS:
            present = name in case.labels
            kinds = ((positive, POSITIVE), (impression, IMPRESSION)) if present else ((negative, NEGATIVE),)
            for found, templates in kinds:
                for template in templates[name]:
                    pattern = _template_pattern(template)
                    if any(pattern.match(s) for s in sentences):
                        found[name].add(template)
    for name in FINDINGS:
        assert len(positive[name]) >= 3, (name, positive[name])
        assert len(negative[name]) >= 3, (name, negative[name])
        assert len(impression[name]) >= 2, (name, impression[name])
    assert sum(len(v) for v in positive.values()) >= 30


def test_reports_describe_normal_anatomy_in_report_language():
    text = " ".join(generate_case("train", i, size=64).report for i in range(200)).lower()
    for phrase in ("trachea is midline", "mediastinal contours", "costophrenic angle", "cardiothoracic ratio",
                   "bony", "osseous", "hila", "air-space opacity", "pleural effusion", "no pneumothorax"):
        assert phrase in text, phrase


def test_the_report_sentences_carry_their_template_and_finding():
    case = generate_case("train", 0, size=64)
    rng = np.random.default_rng(5)
    sentences = report_sentences(rng, case.labels, case.attributes, ctr=case.meta["ctr"])
    positives = [s for s in sentences if s.kind == "positive"]
    assert sorted(s.finding for s in positives) == sorted(case.labels)
    assert all(s.template in POSITIVE[s.finding] for s in positives)
    sections = [s.section for s in sentences]
    assert sections == sorted(sections) and sections[-1] == "impression", "findings first, then the impression"


def test_images_labels_and_masks_are_unchanged_by_the_reports():
    digest = hashlib.sha256()
    for i in range(30):
        case = generate_case("train", i, size=128)
        digest.update(case.image.tobytes())
        digest.update("|".join(case.labels).encode())
        for name in sorted(case.lesions):
            digest.update(np.packbits(case.lesions[name]).tobytes())
    assert digest.hexdigest() == TRAIN30_SHA256


def test_the_demo_concept_set_has_at_least_100_terms_of_radiology_language():
    from xai_core.mammi.concepts import concept_set, extract_concepts, phantom_reports

    terms = extract_concepts(phantom_reports(3000), min_count=3)
    assert len(terms) >= 100, len(terms)
    demo = concept_set("demo")
    assert len(demo) >= 100, len(demo)
    for term in ("pleural effusion", "costophrenic angle", "cardiothoracic ratio", "air-space opacity",
                 "cardiomegaly", "pneumothorax", "pulmonary nodule", "lung mass", "consolidation", "atelectasis",
                 "trachea", "mediastinum", "hilum", "bronchograms", "meniscus", "pleural line"):
        assert term in demo, term


def test_finding_key_ignores_wording_and_keeps_sides():
    a = generate_case("train", 0, size=64)
    expected = "|".join(f"{n}:{a.attributes[n]['side']}" for n in sorted(a.labels))
    assert finding_key(a.labels, a.attributes) == expected
    assert finding_key([], {}) == ""
    left, right = ({"Nodule": {"side": side}} for side in ("left", "right"))
    assert finding_key(["Nodule"], left) != finding_key(["Nodule"], right)


def test_a_contradiction_is_false_for_the_case_in_both_directions():
    from xai_core.phantom.text import contradiction

    kinds = set()
    for i in range(200):
        case = generate_case("train", i, size=64)
        rng = np.random.default_rng(i)
        sentence = contradiction(rng, case.labels)
        negated = [name for name in FINDINGS if sentence in NEGATIVE[name]]
        if negated:
            assert negated[0] in case.labels, ("a negation only of a present finding", case.labels, sentence)
            kinds.add("negation")
            continue
        stated = [name for name in FINDINGS
                  if any(_template_pattern(t).match(sentence) for t in POSITIVE[name] + IMPRESSION[name])]
        assert stated and not set(stated) & set(case.labels), ("a statement of an absent finding", case.labels,
                                                               sentence)
        kinds.add("statement")
    assert kinds == {"negation", "statement"}
    assert contradiction(np.random.default_rng(3), ["Nodule"]) == contradiction(np.random.default_rng(3), ["Nodule"])
    all_present = list(FINDINGS)
    assert all(contradiction(np.random.default_rng(s), all_present) in sum(NEGATIVE.values(), ()) for s in range(20))
