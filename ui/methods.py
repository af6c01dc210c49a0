"""How the pages name explanation methods and metrics: published names, one-line descriptions, fixed colours."""

from __future__ import annotations

# id -> (published name, one-line description). Ids stay the widget values; names are only what is shown.
METHODS = {
    "gradcam": ("Grad-CAM", "class activation map weighted by the gradient of the finding (Selvaraju et al. 2017)"),
    "gradcampp": ("Grad-CAM++", "Grad-CAM with higher-order channel weights, better for several regions "
                                "(Chattopadhay et al. 2018)"),
    "scorecam": ("Score-CAM", "activation maps weighted by how much each one alone raises the finding's score "
                              "(Wang et al. 2020)"),
    "ig": ("Integrated Gradients", "gradients integrated along a path from a blank image (Sundararajan et al. 2017)"),
    "xrai": ("XRAI", "Integrated Gradients summed over image segments, ranked region by region "
                     "(Kapishnikov et al. 2019)"),
    "nemt": ("NEMt", "a decoder trained to predict the explanation maps directly from the network's features"),
    "random": ("random baseline", "a random map: what any method must beat"),
}

# Fixed colours per method (plotly's D3 palette order), the same in every plot of the dashboard.
METHOD_COLOURS = {"gradcam": "#1f77b4", "gradcampp": "#ff7f0e", "scorecam": "#2ca02c", "ig": "#d62728",
                  "xrai": "#9467bd", "nemt": "#8c564b", "random": "#7f7f7f"}
FALLBACK_COLOUR = "#17becf"


def method_name(method: str) -> str:
    """The method's published name ('Grad-CAM'), or its id when it has none."""
    return METHODS.get(method, (method, ""))[0]


def method_description(method: str) -> str:
    return METHODS.get(method, ("", ""))[1]


def method_colour(method: str) -> str:
    return METHOD_COLOURS.get(method, FALLBACK_COLOUR)


def methods_help(methods: list[str], costs: dict[str, str]) -> str:
    """Help text listing each method with its description and its cost (costs and estimates live here, never in
    the option labels, so that a selection stays valid when an estimate changes)."""
    lines = [f"- **{method_name(m)}**: {method_description(m)}" + (f" — {costs[m]}" if costs.get(m) else "")
             for m in methods]
    return "\n".join(lines)
