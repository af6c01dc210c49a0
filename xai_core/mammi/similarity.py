"""A text similarity of concept terms that owes nothing to any vision-language model: lexical, over a small
radiology synonym table.

Definition. A term is lower-cased and split into words (letters and hyphens); stop words and the generic words of
the concept extractor (sides, sizes, grades, boilerplate) are dropped unless `SYNONYMS` lists them; plurals are made
singular by rule; each word is then mapped through `SYNONYMS` to one or more canonical senses ("pulmonary" -> lung,
"effusion" -> fluid, "cardiomegaly" -> heart + enlargement, "consolidation" -> airspace + opacity); a word not in the
table is its own sense. The similarity of two terms is the Jaccard index of their sense sets, |A & B| / |A | B|
(1 for identical terms or synonyms, 0 for terms that share no sense; two terms with no sense at all score 1 when they
are the same string, else 0).

The table is hand-written (about 60 words of chest radiograph vocabulary), not fitted to any data, and fixed: a
VLM under test can neither shape it nor be favoured by it, which is what makes it independent. Its limits: it
knows only the listed synonyms and no graded relatedness ("nodule" and "mass" share no sense and score 0).
"""

from __future__ import annotations

import functools
import re

from xai_core.mammi.concepts import GENERIC_WORDS, IRREGULAR_PLURALS, STOP_WORDS

# word -> canonical senses (a word absent here is its own sense)
SYNONYMS: dict[str, tuple[str, ...]] = {
    # organs and regions
    "pulmonary": ("lung",), "lung": ("lung",), "parenchyma": ("lung",), "parenchymal": ("lung",),
    "cardiac": ("heart",), "heart": ("heart",), "cardio": ("heart",),
    "pleura": ("pleura",), "pleural": ("pleura",),
    "hilar": ("hilum",), "hilum": ("hilum",), "perihilar": ("hilum",),
    "mediastinal": ("mediastinum",), "mediastinum": ("mediastinum",),
    "cardiomediastinal": ("heart", "mediastinum"),
    "osseous": ("bone",), "bony": ("bone",), "bone": ("bone",), "skeletal": ("bone",),
    "diaphragm": ("diaphragm",), "hemidiaphragm": ("diaphragm",), "diaphragmatic": ("diaphragm",),
    "vascularity": ("vessel",), "vasculature": ("vessel",), "vascular": ("vessel",), "vessel": ("vessel",),
    "costophrenic": ("costophrenic",), "sulcus": ("costophrenic",), "angle": ("costophrenic",),
    "thoracic": ("thorax",), "thorax": ("thorax",), "hemithorax": ("thorax",),
    # findings
    "effusion": ("fluid",), "fluid": ("fluid",), "hydrothorax": ("pleura", "fluid"),
    "pneumothorax": ("pleura", "air"), "pneumothoraces": ("pleura", "air"),
    "cardiomegaly": ("heart", "enlargement"), "enlarged": ("enlargement",), "enlargement": ("enlargement",),
    "megaly": ("enlargement",),
    "consolidation": ("airspace", "opacity"), "infiltrate": ("airspace", "opacity"),
    "air-space": ("airspace",), "airspace": ("airspace",), "alveolar": ("airspace",),
    "opacity": ("opacity",), "opacification": ("opacity",), "density": ("opacity",), "opacities": ("opacity",),
    "nodule": ("nodule",), "nodular": ("nodule",),
    "mass": ("mass",), "masslike": ("mass",), "tumor": ("mass",), "neoplasm": ("mass",),
    "atelectasis": ("collapse",), "atelectatic": ("collapse",), "collapse": ("collapse",),
    "edema": ("edema",), "oedema": ("edema",),
    "fracture": ("fracture",), "fractures": ("fracture",),
    "lymphadenopathy": ("lymph node", "enlargement"), "adenopathy": ("lymph node", "enlargement"),
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _singular(word: str) -> str:
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word in SYNONYMS or not word.endswith("s") or word.endswith(("ss", "us", "is", "xs")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1]


@functools.lru_cache(maxsize=4096)
def senses(term: str) -> frozenset[str]:
    """The canonical senses of a term (see the module's definition)."""
    out: set[str] = set()
    for word in _WORD.findall(term.lower()):
        word = _singular(word)
        if word in SYNONYMS:  # before the generic words: "airspace" is generic to the extractor, a sense here
            out.update(SYNONYMS[word])
        elif word not in STOP_WORDS and word not in GENERIC_WORDS:
            out.add(word)
    return frozenset(out)


def lexical_similarity(a: str, b: str) -> float:
    """Jaccard index of the two terms' sense sets, in [0, 1]."""
    left, right = senses(a), senses(b)
    if not left and not right:
        return 1.0 if a.strip().lower() == b.strip().lower() else 0.0
    return len(left & right) / len(left | right)


def best_similarity(term: str, references: set[str] | list[str]) -> float:
    """The highest lexical similarity of `term` to any of `references` (0 when there are none)."""
    return max((lexical_similarity(term, r) for r in references), default=0.0)
