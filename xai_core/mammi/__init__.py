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
    validate_output_layer,
    weights_tag,
)
from xai_core.mammi.backends import ImageTextModel, load_backend
from xai_core.mammi.concepts import concept_set, extract_concepts, openi_reports
from xai_core.mammi.contributions import neuron_contributions
from xai_core.mammi.match import concept_scores, margin_percent, select_concepts
from xai_core.mammi.overlays import activation_maps, neuron_overlay, representative_overlays
from xai_core.mammi.select import band_percent, representatives
from xai_core.mammi.store import AnnotationStore, NeuronRecord, write_annotation

__all__ = [
    "LAYERS", "AnnotationStore", "ImageTextModel", "NeuronRecord", "activation_maps", "annotate_neurons",
    "band_percent", "bundled_annotation", "concept_scores", "concept_set", "default_path", "extract_concepts",
    "feature_maps", "head_weights", "load_backend", "margin_percent", "neuron_contributions", "neuron_overlay",
    "openi_reports", "probe_images", "probe_set", "representative_overlays", "representatives", "select_concepts",
    "validate_output_layer", "weights_tag", "write_annotation",
]
