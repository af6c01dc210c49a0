"""Attribution methods, one module each, behind `base.Explainer` and its registry."""

from xai_core.explainers import gradcam, gradcampp, ig, nemt, random_map, scorecam, xrai  # noqa: F401  (register)
from xai_core.explainers.base import Explainer, Explanation, get_explainer, list_explainers, register

__all__ = ["Explainer", "Explanation", "get_explainer", "list_explainers", "register"]
