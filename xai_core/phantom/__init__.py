"""The synthetic radiograph world: a deterministic generator with ground truth, and its writers."""

from xai_core.phantom.gaze import GAZE_VERSION
from xai_core.phantom.generator import (
    ANATOMY,
    FINDINGS,
    PHANTOM_VERSION,
    SHORTCUT_LABEL,
    PhantomCase,
    case_rng,
    generate_case,
)

__all__ = ["ANATOMY", "FINDINGS", "GAZE_VERSION", "PHANTOM_VERSION", "SHORTCUT_LABEL", "PhantomCase", "case_rng",
           "generate_case"]
