"""MAMMI: mask-free neuron concept annotation (which medical words a classifier's neurons respond to)."""

from xai_core.mammi.annotate import (
    LAYERS,
    annotate_neurons,
    bundled_annotation,
    default_path,
    feature_maps,
    head_weights,
    probe_images,
    probe_set,
    weights_tag,
)
from xai_core.mammi.backends import ImageTextModel, load_backend
from xai_core.mammi.concepts import concept_set, extract_concepts, openi_reports
from xai_core.mammi.contributions import neuron_contributions
from xai_core.mammi.match import HELD_OUT_PROMPTS, PROMPT_TEMPLATES, concept_scores, margin_percent, select_concepts
from xai_core.mammi.overlays import activation_maps, neuron_overlay, representative_overlays
from xai_core.mammi.select import band_percent, representatives
from xai_core.mammi.similarity import lexical_similarity
from xai_core.mammi.store import AnnotationStore, NeuronRecord, write_annotation
from xai_core.mammi.validate import template_sensitivity, validate_concept_sets, validate_output_layer

__all__ = [
    "HELD_OUT_PROMPTS", "LAYERS", "PROMPT_TEMPLATES", "AnnotationStore", "ImageTextModel", "NeuronRecord",
    "activation_maps", "annotate_neurons", "band_percent", "bundled_annotation", "concept_scores", "concept_set",
    "default_path", "extract_concepts", "feature_maps", "head_weights", "lexical_similarity", "load_backend",
    "margin_percent", "neuron_contributions", "neuron_overlay", "openi_reports", "probe_images", "probe_set",
    "representative_overlays", "representatives", "select_concepts", "template_sensitivity",
    "validate_concept_sets", "validate_output_layer", "weights_tag", "write_annotation",
]
