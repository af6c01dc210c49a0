"""Templated radiology reports for phantom cases, and the REFLACX fixation columns the gaze files use."""

from __future__ import annotations

from typing import Any

import numpy as np

POSITIVE = {
    "Cardiomegaly": ["The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette.",
                     "The cardiac silhouette is enlarged, in keeping with cardiomegaly."],
    "Effusion": ["{Severity} {side} pleural effusion with blunting of the costophrenic angle.",
                 "There is a {severity} {side} pleural effusion.",
                 "Blunting of the {side} costophrenic angle with a meniscus, consistent with pleural effusion."],
    "Nodule": ["A small nodule in the {zone} zone of the {side} lung.", "{Side} {zone} zone pulmonary nodule.",
               "There is a {mm} mm nodule in the {side} {zone} lung."],
    "Mass": ["A lobulated mass in the {side} {zone} zone.", "{Side} {zone} zone lung mass.",
             "There is a large {side} lung mass measuring {mm} mm."],
    "Pneumothorax": ["{Side} pneumothorax with a visible pleural line.", "There is a {severity} {side} pneumothorax.",
                     "{Side} apical and lateral pneumothorax without lung markings peripherally."],
    "Consolidation": ["Consolidation in the {side} {zone} zone with air bronchograms.",
                      "Patchy {side} {zone} zone airspace consolidation.", "{Side} {zone} zone consolidation."],
    "Atelectasis": ["Band-like atelectasis in the {side} {zone} zone with elevation of the {side} hemidiaphragm.",
                    "{Side} {zone} zone atelectasis with volume loss.",
                    "Linear atelectasis at the {side} lung base."],
}
NEGATIVE = {
    "Cardiomegaly": ["Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly."],
    "Effusion": ["No pleural effusion.", "The costophrenic angles are sharp."],
    "Nodule": ["No pulmonary nodule."],
    "Mass": ["No lung mass."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "Consolidation": ["No focal consolidation.", "No airspace consolidation."],
    "Atelectasis": ["No atelectasis."],
}
IMPRESSION = {
    "Cardiomegaly": "Cardiomegaly.", "Effusion": "{Side} pleural effusion.", "Nodule": "{Side} lung nodule.",
    "Mass": "{Side} lung mass.", "Pneumothorax": "{Side} pneumothorax.", "Consolidation": "{Side} consolidation.",
    "Atelectasis": "{Side} atelectasis.",
}
NORMAL = ["The lungs are clear.", "Clear lungs bilaterally."]

REFLACX_COLUMNS = (
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position", "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree", "window_level",
    "window_width", "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
    "ymax_shown_from_image",
)


def _fill(template: str, attrs: dict[str, Any]) -> str:
    side = str(attrs.get("side", ""))
    values = {
        "side": side, "Side": side.capitalize(), "zone": attrs.get("zone", ""),
        "severity": attrs.get("severity", ""), "Severity": str(attrs.get("severity", "")).capitalize(),
        "mm": round(float(attrs.get("size", 0.0)) * 350),  # 256 px ~ 35 cm of chest
    }
    return template.format(**values)


def report_for(rng: np.random.Generator, labels: list[str], attributes: dict[str, dict[str, Any]]) -> str:
    """A short report: findings sentences (positives, some negations) and an impression."""
    sentences = [_fill(str(rng.choice(POSITIVE[name])), attributes[name]) for name in labels]
    absent = [name for name in NEGATIVE if name not in labels]
    for name in absent:
        if rng.random() < 0.45:
            sentences.append(str(rng.choice(NEGATIVE[name])))
    if not labels:
        sentences.insert(0, str(rng.choice(NORMAL)))
    order = rng.permutation(len(sentences))
    findings = " ".join(sentences[i] for i in order)
    if labels:
        impression = " ".join(_fill(IMPRESSION[name], attributes[name]) for name in labels)
    else:
        impression = "No acute cardiopulmonary abnormality."
    return f"FINDINGS: {findings} IMPRESSION: {impression}"
