"""MAMMI: mask-free neuron concept annotation (which medical words a classifier's neurons respond to)."""

from xai_core.mammi.annotate import (
    LAYERS,
    annotate_neurons,
    bundled_annotation,
    default_path,
    feature_maps,
    head_weights,
    probe_set,
    validate_output_layer,
)
from xai_core.mammi.backends import ImageTextModel, load_backend
from xai_core.mammi.concepts import concept_set, extract_concepts, openi_reports
from xai_core.mammi.contributions import neuron_contributions
from xai_core.mammi.match import concept_scores, select_concepts
from xai_core.mammi.select import representatives
from xai_core.mammi.store import AnnotationStore, NeuronRecord, write_annotation

__all__ = [
    "LAYERS", "AnnotationStore", "ImageTextModel", "NeuronRecord", "annotate_neurons", "bundled_annotation",
    "concept_scores", "concept_set", "default_path", "extract_concepts", "feature_maps", "head_weights",
    "load_backend", "neuron_contributions", "openi_reports", "probe_set", "representatives", "select_concepts",
    "validate_output_layer", "write_annotation",
]
