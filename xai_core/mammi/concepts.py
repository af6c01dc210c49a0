"""Concept sets: medical terms (nouns and two-word noun phrases) extracted from radiology reports.

No tagger or corpus is downloaded: the extractor is a small rule set (stop and generic words, adjective suffixes,
plural merging) shipped here, good enough for the short, formulaic language of chest radiograph reports.
"""

from __future__ import annotations

import functools
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from xai_core.phantom import generate_case


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS = _words("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each either few for from further had has have having here how i if in
into is it its itself just may might more most much must no nor not now of off on once only or other our out over
own per same should since so some such than that the their them then there these they this those through to too
under until up upon very via was we were what when where whether which while who whom why will with within without
would yet xxxx x y
""")
# Words that carry no finding: sides, positions, sizes, grades, report boilerplate, imaging technique, time.
GENERIC_WORDS = _words("""
left right bilateral bilaterally upper lower middle mid zone zones lobe lobes base bases apex apical basilar side sides
anterior posterior lateral medial central peripheral superior inferior frontal region regions area areas level levels
small large tiny mild mildly moderate moderately severe severely minimal minimally slight slightly marked markedly
new old stable unchanged change changes changed interval prior previous previously recent current comparison compared
normal abnormal abnormality abnormalities acute chronic evidence findings finding impression examination exam study
image images view views film films radiograph radiographs technique patient history indication report reports
pa ap portable upright supine frontal chest xray x-ray ray rays radiology otherwise again unremarkable limits
size shape contour contours appearance appearances configuration position degree amount number part parts portion
visible visualized seen noted identified demonstrated present absent possible possibly likely probable probably
suspicious suggest suggests suggestive consistent compatible concerning represent represents representing
within without since given status post clear clearly well there measuring measures measure cm mm
acute cardiopulmonary process disease focal diffuse airspace air space otherwise definite definitely significant
grossly overall stable redemonstrated demonstrate demonstrates show shows showing limit structure structures intact
low high free versus remain remains due greater recommend recommended age consists throughout however although weeks
week fourth third second first single end uncertain difficult ensure document documented appear appears appearing
cardio factors factor include includes including exclude excluded evaluate evaluation followup follow-up
consideration considered question further additional multiple borderline sharp
increased decreased improved worsened resolved stable top upper-normal
heart-size lungs-clear loss obscured obscuring overlying overlie overlies underlying possible mildly one two three
consider reflect reflects cannot correlate correlation result results somewhat known along vague overt project
projects projecting note notes concern diagnosis today complete confirm difference worse gross obscure location
stability coarse indistinct aspect scan reason please appropriate better characterization discrete etiology
increase indicate notification outside remainder remote subtle redemonstration multilevel age-indeterminate round
left-sided right-sided midlung greatest maximal maximum dimension dimensions diameter
""")
IRREGULAR_PLURALS = {"pneumothoraces": "pneumothorax", "apices": "apex", "sulci": "sulcus", "vertebrae": "vertebra",
                     "bullae": "bulla", "hila": "hilum", "diaphragms": "diaphragm", "sequelae": "sequela"}
# Adjective endings: such words open a two-word phrase ("pleural effusion") but are not concepts on their own.
ADJECTIVE_SUFFIXES = ("al", "ic", "ac", "ar", "ary", "ous", "ive", "ed", "ing", "ly", "ful", "less", "able", "ible",
                      "ent", "ant", "oid", "like")
# Descriptive words without an adjective ending: they open a phrase ("calcified granuloma") but stand for nothing alone.
MODIFIERS = _words("calcified tortuous patchy dense streaky hazy bony soft enlarged prominent elevated")
# Nouns with an adjective ending, kept as concepts.
NOUN_EXCEPTIONS = _words("""
interval hilum thorax pneumothorax hydropneumothorax mediastinum granuloma tubing line lines catheter scarring
spondylosis kyphosis scoliosis atelectasis fibrosis emphysema edema effusion thickening blunting widening crowding
""")
WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _is_adjective(word: str) -> bool:
    if word in NOUN_EXCEPTIONS or word.endswith(("megaly", "osis", "itis", "ectasis")):
        return False
    return word in MODIFIERS or word.endswith(ADJECTIVE_SUFFIXES)


def _content(word: str) -> bool:
    return (len(word) > 2 and word not in STOP_WORDS and word not in GENERIC_WORDS and "xxxx" not in word
            and not any(c.isdigit() for c in word))


def _singular(word: str, vocabulary: Counter) -> str:
    """The singular form of a plural when that form occurs in the corpus ("effusions" -> "effusion")."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith(("ss", "us", "is", "xs")) or not word.endswith("s"):
        return word
    for candidate in (word[:-3] + "y" if word.endswith("ies") else None, word[:-2] if word.endswith("es") else None,
                      word[:-1]):
        if candidate and vocabulary.get(candidate):
            return candidate
    return word


def sentences_of(reports: Iterable[str]) -> list[list[str]]:
    """Lower-cased word lists per clause (sentences split at punctuation: "No effusion, pneumothorax" is two)."""
    out = []
    for report in reports:
        for sentence in re.split(r"[.,;:!?()\n]+", report.lower()):
            words = WORD.findall(sentence)
            if words:
                out.append(words)
    return out


def extract_concepts(reports: Iterable[str], min_count: int = 3, max_terms: int | None = None) -> list[str]:
    """Single nouns and two-word noun phrases (adjective or noun + noun) that occur at least `min_count` times,
    plurals merged, stop and generic words dropped; most frequent first."""
    sentences = sentences_of(reports)
    raw = Counter(word for sentence in sentences for word in sentence)
    sentences = [[_singular(w, raw) for w in sentence] for sentence in sentences]
    singles: Counter = Counter()
    pairs: Counter = Counter()
    for sentence in sentences:
        for i, word in enumerate(sentence):
            if not _content(word):
                continue
            if not _is_adjective(word):
                singles[word] += 1
            if i + 1 < len(sentence):
                head = sentence[i + 1]
                if _content(head) and not _is_adjective(head) and head != word:
                    pairs[f"{word} {head}"] += 1
    counts = Counter({w: n for w, n in singles.items() if n >= min_count})
    counts.update({p: n for p, n in pairs.items() if n >= min_count})
    ranked = [term for term, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return ranked[:max_terms] if max_terms else ranked


@functools.lru_cache(maxsize=1)
def openi_reports() -> tuple[str, ...]:
    """FINDINGS and IMPRESSION texts of the OpenI (Indiana University) reports shipped inside torchxrayvision."""
    try:
        archive = resources.files("torchxrayvision") / "data" / "NLMCXR_reports.tgz"
    except ModuleNotFoundError as error:
        raise FileNotFoundError("the OpenI reports ship with torchxrayvision, which is not installed") from error
    reports = []
    with resources.as_file(archive) as path, tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            parts = [node.text or "" for node in root.iter("AbstractText")
                     if node.get("Label") in ("FINDINGS", "IMPRESSION")]
            text = " ".join(p.strip() for p in parts if p.strip())
            if text:
                reports.append(text)
    return tuple(reports)


def phantom_reports(n: int = 2000, split: str = "train", seed: int = 0) -> list[str]:
    """Reports of the first `n` phantom cases of a split (generated at a small size: only the text is used)."""
    return [generate_case(split, i, seed=seed, size=64).report for i in range(n)]


def file_reports(path: str | Path) -> list[str]:
    """Reports from a text file: one per non-empty line, or blank-line separated paragraphs."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    return blocks if len(blocks) > 1 else [line.strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=8)
def concept_set(source: str, min_count: int | None = None) -> tuple[str, ...]:
    """A named concept set: `demo` (phantom reports), `openi` (OpenI reports), or a path to a text file."""
    if source == "demo":
        return tuple(extract_concepts(phantom_reports(), min_count=min_count or 3))
    if source == "openi":
        return tuple(extract_concepts(openi_reports(), min_count=min_count or 8))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"concept set '{source}': expected demo, openi or a text file of reports")
    return tuple(extract_concepts(file_reports(path), min_count=min_count or 2))
