"""Radiology reports for phantom cases, and the REFLACX fixation columns the gaze files use.

A report reads like a chest radiograph report of the OpenI collection: findings grouped heart and mediastinum,
lungs, pleura, bones; several phrasings per finding and per negation; the finding described by what the case
knows about it (side, zone, size in mm or cm, severity, the cardiothoracic ratio); normal-anatomy statements only
where they hold (sharp costophrenic angles without an effusion, clear lungs without a lung finding) and negations
only of absent findings. The phrasing was learnt by reading the OpenI reports; the short stock formulae of the
field ("No pneumothorax.", "The trachea is midline.") are shared with them, the rest is written here.

The report is drawn from the case's random stream after the image, labels and masks (which it cannot change) and
before the gaze. Every sentence here is report language: none is a prompt template of MAMMI or of its held-out
paraphrases (`xai_core.training.clip.check_training_texts` enforces this on the training texts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

CM_PER_UNIT = 35.0  # the phantom's film: 256 px (one normalised unit) is about 35 cm of chest

# --- descriptors --------------------------------------------------------------------------------------------------
# Where in a lung, per zone: a prepositional phrase ("in the right midlung") and an adjective form ("right mid zone").
ZONE_PLACES = {"upper": ("upper lung zone", "upper zone", "upper lung"),
               "middle": ("midlung", "mid zone", "middle lung zone"),
               "lower": ("lung base", "lower zone", "lower lung zone")}
ZONE_ADJECTIVES = {"upper": ("upper zone",), "middle": ("mid zone", "midlung"), "lower": ("lower zone", "basilar")}
# The size words radiologists use for each grade, per finding (a phantom finding's severity is its size class).
SEVERITY_WORDS = {
    "Effusion": {"mild": ("small",), "moderate": ("moderate", "moderate-sized"), "severe": ("large",)},
    "Pneumothorax": {"mild": ("small",), "moderate": ("moderate", "moderate-sized"), "severe": ("large",)},
    "Cardiomegaly": {"mild": ("mild",), "moderate": ("moderate",), "severe": ("marked", "severe")},
    "Consolidation": {"mild": ("patchy",), "moderate": ("confluent",), "severe": ("dense", "extensive")},
    "Nodule": {"mild": ("small",), "moderate": ("rounded",), "severe": ("rounded",)},
    "Mass": {"mild": ("lobulated",), "moderate": ("lobulated",), "severe": ("large lobulated",)},
    "Atelectasis": {"mild": ("linear",), "moderate": ("linear", "plate-like", "subsegmental", "band-like"),
                    "severe": ("subsegmental",)},
}

# --- findings -----------------------------------------------------------------------------------------------------
# Slots: {side} patient's side, {where} side + zone place, {zonal} side + zone adjective, {sev} a severity word,
# {mm} / {cm} the finding's size, {ctr} the cardiothoracic ratio. The first letter is capitalised after filling.
POSITIVE = {
    "Cardiomegaly": (
        "The heart is {sev}ly enlarged.",
        "The cardiac silhouette is enlarged, with a cardiothoracic ratio of {ctr}.",
        "{sev} cardiomegaly.",
        "There is {sev} cardiomegaly.",
        "Enlarged cardiac silhouette, cardiothoracic ratio {ctr}, in keeping with cardiomegaly.",
        "{sev} cardiac enlargement, in keeping with cardiomegaly, without pulmonary vascular congestion.",
        "Heart size is enlarged, with a cardiothoracic ratio of approximately {ctr}.",
    ),
    "Effusion": (
        "There is a {sev} {side} pleural effusion with blunting of the {side} costophrenic angle.",
        "{sev} {side} pleural effusion.",
        "Blunting of the {side} costophrenic angle with a meniscus, consistent with a {sev} pleural effusion.",
        "A {sev} {side}-sided pleural effusion is seen at the {side} lung base.",
        "Opacification of the lower {side} hemithorax with a meniscus, in keeping with a {sev} pleural effusion.",
        "{sev} {side} pleural effusion with obscuration of the {side} hemidiaphragm.",
        "A {sev} amount of {side} pleural fluid with a meniscus, consistent with pleural effusion.",
    ),
    "Pneumothorax": (
        "There is a {sev} {side} pneumothorax with a visible visceral pleural line.",
        "{sev} {side} apical and lateral pneumothorax, measuring up to {mm} mm.",
        "A {side}-sided pneumothorax is present, with absent lung markings peripheral to the pleural line.",
        "{sev} {side} pneumothorax, the pleural line about {mm} mm from the lateral chest wall.",
        "There is a {side} pneumothorax measuring {mm} mm in maximal thickness, without mediastinal shift.",
        "{sev} {side} pneumothorax with partial collapse of the {side} lung and no evidence of tension.",
    ),
    "Nodule": (
        "There is a {mm} mm nodule in the {where}.",
        "A {sev} well-circumscribed pulmonary nodule in the {where}, measuring {mm} mm, without spiculation.",
        "{cm} cm nodular opacity in the {where}.",
        "{zonal} pulmonary nodule measuring {mm} mm.",
        "A {sev} noncalcified nodule projects over the {where}, {cm} cm in diameter.",
        "Nodular density in the {where}, {mm} mm, with well-defined margins.",
        "Solitary pulmonary nodule in the {where}, {mm} mm.",
    ),
    "Mass": (
        "There is a {sev} mass in the {where} measuring {cm} cm.",
        "{zonal} mass, approximately {cm} cm.",
        "A {cm} cm mass with a lobulated margin is seen in the {where}.",
        "Masslike opacity in the {where}, measuring approximately {cm} cm, with a lobulated contour.",
        "{sev} pulmonary mass in the {where}, {cm} cm, which may represent malignancy; CT is recommended.",
    ),
    "Consolidation": (
        "There is {sev} airspace consolidation in the {where} with air bronchograms.",
        "{sev} consolidation in the {where}.",
        "Focal air-space opacity in the {where}, measuring about {cm} cm, consistent with consolidation.",
        "Opacification of the {where} with air bronchograms, consistent with a focal infiltrate or consolidation.",
        "{zonal} airspace disease with air bronchograms, in keeping with consolidation.",
        "{sev} {zonal} consolidation, which could represent pneumonia in the appropriate clinical setting.",
    ),
    "Atelectasis": (
        "{sev} atelectasis in the {where} with elevation of the {side} hemidiaphragm.",
        "{zonal} atelectasis with volume loss and bronchovascular crowding.",
        "There is {sev} atelectasis in the {where}.",
        "Band-like opacity in the {where}, consistent with subsegmental atelectasis.",
        "Elevation of the {side} hemidiaphragm with {sev} {zonal} atelectasis.",
    ),
}
# Impression phrases: every one names the finding by its label or its clinical term.
IMPRESSION = {
    "Cardiomegaly": ("Cardiomegaly.", "{sev} cardiomegaly.", "Enlarged heart, cardiomegaly."),
    "Effusion": ("{side} pleural effusion.", "{sev} {side} pleural effusion.", "{side}-sided pleural effusion."),
    "Pneumothorax": ("{side} pneumothorax.", "{sev} {side} pneumothorax.", "{side}-sided pneumothorax."),
    "Nodule": ("{zonal} pulmonary nodule.", "{side} lung nodule, {mm} mm.", "{mm} mm {side} pulmonary nodule."),
    "Mass": ("{zonal} mass.", "{cm} cm {side} lung mass.", "{side} lung mass."),
    "Consolidation": ("{zonal} consolidation.", "{side} consolidation.", "{sev} {side} consolidation."),
    "Atelectasis": ("{zonal} atelectasis.", "{side} atelectasis.", "{side} subsegmental atelectasis."),
}
NEGATIVE = {
    "Cardiomegaly": ("No cardiomegaly.", "Heart size is normal.", "The heart is normal in size.",
                     "Normal heart size."),
    "Effusion": ("No pleural effusion.", "There is no pleural effusion.", "No pleural fluid.",
                 "No pleural effusions."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen.",
                     "No visible pneumothorax."),
    "Nodule": ("No pulmonary nodule.", "No suspicious pulmonary nodule is identified.", "There are no nodules.",
               "No discrete nodule."),
    "Mass": ("No lung mass.", "No suspicious pulmonary mass.", "There is no mass.", "No mass lesion."),
    "Consolidation": ("No focal consolidation.", "No focal airspace consolidation.",
                      "There is no focal air-space opacity.", "No focal airspace disease."),
    "Atelectasis": ("No atelectasis.", "No focal atelectasis.", "No volume loss.", "There is no atelectasis."),
}
# Negations of two or three absent findings in one sentence, as reports write them.
COMBINED_NEGATIVE = {
    ("Effusion", "Pneumothorax"): ("No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion.",
                                   "There is no pleural effusion or pneumothorax."),
    ("Mass", "Nodule"): ("No nodules or masses.", "There are no suspicious pulmonary nodules or masses.",
                         "No pulmonary nodule or mass is identified."),
    ("Consolidation", "Effusion", "Pneumothorax"): (
        "No focal consolidation, pleural effusion, or pneumothorax.",
        "No focal airspace consolidation, pneumothorax, or pleural effusion.",
        "There is no focal consolidation, pleural effusion, or pneumothorax."),
}
# findings that keep a report from calling the lungs clear (Cardiomegaly does not)
PARENCHYMAL = ("Atelectasis", "Consolidation", "Effusion", "Mass", "Nodule", "Pneumothorax")

# --- normal anatomy -----------------------------------------------------------------------------------------------
# (group, condition, phrasings): a statement is made only when its condition holds for the case's findings.
# Conditions: "always", "no A,B" (none of the findings A, B present), "any A,B" (at least one present).
CLEAR_LUNGS = ("The lungs are clear.", "Clear lungs bilaterally.", "The lungs are well expanded and clear.",
               "Lung parenchyma is clear.")
NORMAL_STATEMENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("heart", "no Cardiomegaly", ("The cardiac silhouette is within normal limits.",
                                  "The cardiothoracic ratio is {ctr}, within normal limits.",
                                  "Heart size and pulmonary vascularity are within normal limits.",
                                  "The cardiomediastinal silhouette is normal in size and contour.")),
    ("mediastinum", "always", ("The mediastinal contours are within normal limits.", "Normal mediastinal contour.",
                               "The mediastinum is unremarkable.", "Mediastinal contours are normal.")),
    ("mediastinum", "always", ("The trachea is midline.", "Trachea midline.", "The trachea is central.")),
    ("mediastinum", "always", ("The hila are normal in size and position.", "Hilar contours are unremarkable.",
                               "Normal hilar contours.", "No hilar lymphadenopathy.",
                               "No mediastinal or hilar lymphadenopathy.")),
    ("mediastinum", "always", ("The aortic arch is normal in contour.", "The thoracic aorta is unremarkable.",
                               "No mediastinal widening.")),
    ("lungs", "always", ("Pulmonary vascularity is within normal limits.", "Normal pulmonary vasculature.",
                         "No pulmonary edema.", "No interstitial edema.", "No pulmonary vascular congestion.")),
    ("lungs", "always", ("No emphysema.", "No hyperinflation.", "No calcified granuloma.")),
    ("lungs", "no " + ",".join(PARENCHYMAL), CLEAR_LUNGS),
    ("lungs", "any " + ",".join(PARENCHYMAL), ("The lungs are otherwise clear.", "The remainder of the lungs is clear.",
                                               "Lungs otherwise clear.")),
    ("lungs", "no Atelectasis,Pneumothorax", ("Lung volumes are normal.", "Normal lung volumes.",
                                              "The lungs are well inflated.")),
    ("pleura", "no Effusion", ("The costophrenic angles are sharp.", "Both costophrenic angles are sharp and clear.",
                               "Sharp costophrenic angles.")),
    ("pleura", "always", ("No pleural thickening.", "There is no pleural thickening.")),
    ("pleura", "no Effusion", ("No costophrenic blunting.", "No blunting of the costophrenic angles.")),
    ("diaphragm", "no Atelectasis,Effusion", ("The hemidiaphragms are normal in contour and position.",
                                           "Both hemidiaphragms are well defined.",
                                           "Normal contour of the hemidiaphragms.")),
    # (no "pneumoperitoneum" / "pneumomediastinum": their sub-words are pneumothorax's, and a small text tower
    # trained from scratch confuses them with it)
    ("diaphragm", "always", ("No free air under the diaphragm.", "No subdiaphragmatic free air.")),
    ("diaphragm", "always", ("The gastric bubble is in normal position.", "Normal gastric bubble.")),
    ("bones", "always", ("Bony structures are intact.", "No acute osseous abnormality.",
                         "The visualized osseous structures are unremarkable.", "The bony thorax is intact.",
                         "No acute bony findings.")),
    ("bones", "always", ("No acute rib fracture.", "No rib fracture is seen.", "The clavicles and ribs are intact.")),
    ("bones", "always", ("The thoracic spine is unremarkable.", "Normal alignment of the thoracic spine.")),
    ("soft tissue", "always", ("The soft tissues are unremarkable.", "Soft tissues are within normal limits.",
                               "No subcutaneous emphysema.")),
    ("comparison", "always", ("No prior radiographs are available for comparison.",
                              "No previous study is available for comparison.")),
)
NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary disease.",
                     "No acute cardiopulmonary process.")
# The share of reports that make each normal statement (a condition permitting), and of absent findings negated.
# Tuned so that a report is about as long as an OpenI one (median 34 words there; about 45 here, which names more).
STATEMENT_RATE = {"heart": 0.55, "mediastinum": 0.22, "lungs": 0.25, "pleura": 0.18, "diaphragm": 0.1,
                  "bones": 0.3, "soft tissue": 0.08, "comparison": 0.08}
NEGATION_RATE = 0.3
COMBINED_RATE = 0.5
GROUP_ORDER = ("comparison", "heart", "mediastinum", "lungs", "pleura", "diaphragm", "bones", "soft tissue")
# where a finding's sentence goes in the findings section
FINDING_GROUP = {"Cardiomegaly": "heart", "Atelectasis": "lungs", "Consolidation": "lungs", "Mass": "lungs",
                 "Nodule": "lungs", "Effusion": "pleura", "Pneumothorax": "pleura"}

REFLACX_COLUMNS = (
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position", "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree", "window_level",
    "window_width", "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
    "ymax_shown_from_image",
)


@dataclass(frozen=True)
class Sentence:
    """One sentence of a report: its section, group, the finding it is about (if any), its template and text."""
    section: str  # "findings" | "impression"
    group: str
    finding: str | None
    kind: str  # "positive" | "negative" | "normal" | "impression"
    template: str
    text: str


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slots(rng: np.random.Generator, name: str, attrs: dict[str, Any], ctr: float | None) -> dict[str, str]:
    """The words a finding's templates are filled with, from the case's attributes."""
    side = str(attrs.get("side", ""))
    zone = str(attrs.get("zone", ""))
    size = float(attrs.get("size", 0.0))
    # Consolidation's size is its area fraction (the diameter of a disc of that area is said); Nodule's and Mass's
    # their diameter; Pneumothorax's the width of its rim of air
    diameter_cm = (2 * np.sqrt(size / np.pi) if name == "Consolidation" else size) * CM_PER_UNIT
    ratio = attrs.get("ctr", ctr)
    severity = SEVERITY_WORDS.get(name, {}).get(str(attrs.get("severity", "")), ("",))
    return {
        "side": side,
        "where": f"{side} {_pick(rng, ZONE_PLACES[zone])}" if zone in ZONE_PLACES else side,
        "zonal": f"{side} {_pick(rng, ZONE_ADJECTIVES[zone])}" if zone in ZONE_ADJECTIVES else side,
        "sev": _pick(rng, severity),
        "mm": str(round(diameter_cm * 10)),
        "cm": f"{diameter_cm:.1f}",
        "ctr": f"{float(ratio):.2f}" if ratio is not None else "",
    }


def _fill(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return _capitalise(" ".join(text.split()))


def _holds(condition: str, labels: list[str]) -> bool:
    """Whether a normal statement's condition ("always", "no A,B", "any A,B") holds for a case's findings."""
    if condition == "always":
        return True
    kind, _, names = condition.partition(" ")
    found = [name in labels for name in names.split(",")]
    if kind == "no":
        return not any(found)
    if kind == "any":
        return any(found)
    raise ValueError(f"unknown condition '{condition}'")


def report_sentences(rng: np.random.Generator, labels: list[str], attributes: dict[str, dict[str, Any]],
                     ctr: float | None = None) -> list[Sentence]:
    """The sentences of one report, in reading order: findings (grouped heart and mediastinum, lungs, pleura,
    diaphragm, bones) then the impression. `ctr`: the case's cardiothoracic ratio (normal-heart statements)."""
    by_group: dict[str, list[Sentence]] = {group: [] for group in GROUP_ORDER}
    for name in labels:
        template = _pick(rng, POSITIVE[name])
        text = _fill(template, _slots(rng, name, attributes[name], ctr))
        by_group[FINDING_GROUP[name]].append(Sentence("findings", FINDING_GROUP[name], name, "positive", template,
                                                      text))
    absent = [name for name in NEGATIVE if name not in labels]
    negated: set[str] = set()
    for names, options in COMBINED_NEGATIVE.items():
        if all(n in absent and n not in negated for n in names) and rng.random() < COMBINED_RATE:
            template = _pick(rng, options)
            group = "pleura" if "Effusion" in names else "lungs"
            by_group[group].append(Sentence("findings", group, "+".join(names), "negative", template, template))
            negated.update(names)
    for name in absent:
        if name in negated or rng.random() >= NEGATION_RATE:
            continue
        template = _pick(rng, NEGATIVE[name])
        negated.add(name)
        group = FINDING_GROUP[name]
        by_group[group].append(Sentence("findings", group, name, "negative", template, template))
    for group, condition, options in NORMAL_STATEMENTS:
        if group == "heart" and "Cardiomegaly" in negated:  # the heart was said to be normal already
            continue
        if _holds(condition, labels) and rng.random() < STATEMENT_RATE[group]:
            template = _pick(rng, options)
            if "{ctr}" in template and ctr is None:
                continue
            text = template.format(ctr=f"{ctr:.2f}") if "{ctr}" in template else template
            by_group[group].append(Sentence("findings", group, None, "normal", template, text))
    findings = []
    for group in GROUP_ORDER:
        sentences = by_group[group]
        order = rng.permutation(len(sentences))  # within a group: what is found first, then what is not
        findings += sorted((sentences[i] for i in order), key=lambda s: s.kind != "positive")
    if not findings:  # a normal case that drew no statement still says something about the lungs
        template = _pick(rng, CLEAR_LUNGS)
        findings.append(Sentence("findings", "lungs", None, "normal", template, template))
    if labels:
        impression = []
        for name in labels:
            template = _pick(rng, IMPRESSION[name])
            impression.append(Sentence("impression", FINDING_GROUP[name], name, "impression", template,
                                       _fill(template, _slots(rng, name, attributes[name], ctr))))
    else:
        template = _pick(rng, NORMAL_IMPRESSION)
        impression = [Sentence("impression", "impression", None, "impression", template, template)]
    return findings + impression


def report_for(rng: np.random.Generator, labels: list[str], attributes: dict[str, dict[str, Any]],
               ctr: float | None = None) -> str:
    """A report: 'FINDINGS: ... IMPRESSION: ...' (see `report_sentences`)."""
    sentences = report_sentences(rng, labels, attributes, ctr)
    findings = " ".join(s.text for s in sentences if s.section == "findings")
    impression = " ".join(s.text for s in sentences if s.section == "impression")
    return f"FINDINGS: {findings} IMPRESSION: {impression}"


# The modifiers of a finding statement: where (side, zone) and how much (severity). `without_modifiers` leaves them out.
def _alternatives(words: set[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PLACE = _alternatives({p for places in ZONE_PLACES.values() for p in places})
_SEVERITY = _alternatives({w for words in SEVERITY_WORDS.values() for options in words.values() for w in options})
_ZONE = _alternatives({a for adjectives in ZONE_ADJECTIVES.values() for a in adjectives})
MODIFIERS = re.compile(
    rf"\bA (?:{_SEVERITY}) amount of\s+"  # "A small amount of" (pleural fluid)
    rf"|\s+(?:in|at|of) the (?:(?:left|right) )?(?:{_PLACE})\b"  # "in the right upper lung zone"
    rf"|\b(?:left|right)(?:-sided)?\s+"  # a side
    rf"|\b(?:{_SEVERITY})(?:ly)?\s+(?!margin|contour)"  # a severity word ("a lobulated margin" is a finding's sign)
    rf"|\b(?:{_ZONE})\s+",  # a zone adjective ("upper zone atelectasis")
    re.IGNORECASE)
_SENTENCE_START = re.compile(r"^[a-z]|(?<=: )[a-z]|(?<=\. )[a-z]")


def without_modifiers(text: str) -> str:
    """A report text with the side, zone and severity of its findings left out ("There is a small left pleural
    effusion." -> "There is a pleural effusion."; "Dense consolidation in the right upper zone." -> "Consolidation.");
    sizes and signs stay. Still true of the film. Reports qualify nearly every finding they affirm and never the ones
    they negate ("No pleural effusion."), so without such texts a bare finding term reads as its negation."""
    return _SENTENCE_START.sub(lambda m: m[0].upper(), MODIFIERS.sub("", text))


# Sizes (in the generator's normalised units) to word a statement about a finding the case does not have.
INVENTED_SIZE = {"Cardiomegaly": (0.35, 0.45), "Effusion": (0.01, 0.04), "Pneumothorax": (0.03, 0.07),
                 "Nodule": (0.02, 0.045), "Mass": (0.09, 0.16), "Consolidation": (0.004, 0.02),
                 "Atelectasis": (0.005, 0.015)}


def contradiction(rng: np.random.Generator, labels: list[str]) -> str:
    """A report sentence that is false for a case with these findings: half the time (always, for a normal case) a
    statement of a finding it does not have, worded with an invented side, zone, size and severity; otherwise the
    negation of one of its findings ("No pneumothorax."). Hard negatives for image-text training."""
    absent = tuple(name for name in NEGATIVE if name not in labels)
    if labels and (not absent or rng.random() < 0.5):
        return _pick(rng, NEGATIVE[_pick(rng, tuple(labels))])
    name = _pick(rng, absent)
    attrs = {"side": "central" if name == "Cardiomegaly" else _pick(rng, ("left", "right")),
             "zone": _pick(rng, tuple(ZONE_PLACES)), "severity": _pick(rng, ("mild", "moderate", "severe")),
             "size": float(rng.uniform(*INVENTED_SIZE[name]))}
    template = _pick(rng, POSITIVE[name] + IMPRESSION[name])
    return _fill(template, _slots(rng, name, attrs, float(rng.uniform(0.55, 0.65))))


def finding_key(labels: list[str], attributes: dict[str, dict[str, Any]]) -> str:
    """What a report says, independent of its wording: each finding with its side ("Effusion:left|Nodule:right";
    "" for a normal case). Contrastive training matches image and text by it."""
    return "|".join(f"{name}:{attributes.get(name, {}).get('side', '')}" for name in sorted(labels))
