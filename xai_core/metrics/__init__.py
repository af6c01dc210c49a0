"""Quantitative evaluation of explanation maps (localisation, shape, faithfulness, information curves, gaze)."""

from xai_core.metrics.localisation import (
    auitc,
    iou_at,
    iou_curve,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from xai_core.metrics.shape import complexity, sparseness
from xai_core.metrics.stats import bootstrap_ci, bootstrap_interval, summarise

__all__ = ["auitc", "bootstrap_ci", "bootstrap_interval", "complexity", "iou_at", "iou_curve", "pointing_game",
           "relevance_mass",
           "relevance_rank", "sparseness", "summarise"]
