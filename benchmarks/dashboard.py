"""Time from picking a sample case to the first overlays on the Explain page (NEMt + Grad-CAM), and the time a
control change (opacity, colour map, colour range, contour) takes to redraw a grid of six tiles (the four fast
methods plus IG and Score-CAM once computed), driving the app with Streamlit's AppTest (server-side work; the
browser's drawing is not included).

Bars (issue 28): pick to first overlays < 2 s; a control change on six tiles < 1.5 s.

    python benchmarks/dashboard.py [--repeats 5] [--json [OUT]]
    python -m xai_core bench dashboard
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_json_option, write_json  # noqa: E402


def one_run(sample_index: int) -> dict[str, Any]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()  # cold start: models load here
    samples = [s for s in at.selectbox(key="sample").options if "phantom" in s]
    start = time.perf_counter()
    at.selectbox(key="sample").set_value(samples[sample_index % len(samples)]).run()
    picked = time.perf_counter()
    at.switch_page("pages/explain_page.py")
    at.session_state["methods"] = ["nemt", "gradcam"]
    at.run()
    done = time.perf_counter()
    methods = list(at.session_state["methods"])
    assert not at.exception and len(at.get("plotly_chart")) == len(methods) >= 2, "overlays drawn"
    return {"pick_to_findings_s": picked - start, "pick_to_overlays_s": done - start, "methods": methods,
            "control_change_s": control_changes(at)}


GRID = ["gradcam", "gradcampp", "nemt", "random", "ig", "scorecam"]
CONTROLS = ("opacity", "colour_map", "range_mode", "contour")


def _following(options: list, current: object) -> object:
    return options[(options.index(current) + 1) % len(options)]


def _changed(at, key: str) -> tuple[object, object]:
    """A control of the Explain page and a new value for it."""
    from xai_core.display import SCALE_MODES

    if key == "opacity":
        return at.slider(key=key), 0.35
    if key == "contour":
        widget = at.toggle(key=key)
        return widget, not widget.value
    if key == "colour_map":
        widget = at.selectbox(key=key)
        return widget, _following(list(widget.options), widget.value)
    widget = at.radio(key=key)  # its labels are formatted: step through the raw values
    return widget, _following(list(SCALE_MODES), widget.value)


def control_changes(at) -> dict[str, float]:
    """Seconds per rerun after each control change on a grid of the six GRID tiles, every map already made."""
    at.session_state["methods"] = GRID
    at.run()
    for method in ("ig", "scorecam"):
        at.button(key=f"compute-{method}").click().run()
    deadline = time.monotonic() + 300
    while any((b.key or "").startswith(("compute-", "cancel-")) for b in at.button):
        if time.monotonic() > deadline:
            raise RuntimeError("the slow maps did not finish within 300 s")
        time.sleep(0.5)
        at.run()
    assert not at.exception and len(at.get("plotly_chart")) == len(GRID), "six overlays drawn"
    seconds = {}
    for key in CONTROLS:
        widget, value = _changed(at, key)
        start = time.perf_counter()
        widget.set_value(value).run()
        seconds[key] = time.perf_counter() - start
        assert not at.exception and len(at.get("plotly_chart")) == len(GRID)
    return seconds


def register_seeded_nemt(model: str = "demo") -> None:
    """A seeded, untrained NEMt decoder for `model` (timing only: a decoder costs the same trained or not; `demo`
    bundles no trained one because it misses its localisation bar)."""
    import torch

    from xai_core.models import load_model
    from xai_core.nemt import NEMtDecoder, input_scale, register_decoder, tap_channels

    handle = load_model(model)
    torch.manual_seed(0)
    decoder = NEMtDecoder(tap_channels(handle.module, 1), len(handle.card.labels), 1, input_scale=input_scale(handle))
    register_decoder(handle, decoder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    add_json_option(parser, "dashboard")
    parser.add_argument("--seeded-nemt", action="store_true",
                        help="time NEMt with a seeded untrained decoder when the model bundles none (timing only)")
    args = parser.parse_args(argv)
    if args.seeded_nemt:
        register_seeded_nemt()
    runs = [one_run(i) for i in range(args.repeats)]
    for i, r in enumerate(runs):
        print(f"sample {i}: findings after {r['pick_to_findings_s']:.2f} s, "
              f"overlays ({' + '.join(r['methods'])}) after {r['pick_to_overlays_s']:.2f} s")
    median = statistics.median(r["pick_to_overlays_s"] for r in runs)
    print(f"median pick -> overlays: {median:.2f} s over {len(runs)} samples (bar: < 2 s)")
    changes = [s for r in runs for s in r["control_change_s"].values()]
    worst, typical = max(changes), statistics.median(changes)
    print(f"control change on {len(GRID)} tiles: median {typical:.2f} s, worst {worst:.2f} s over {len(changes)} "
          f"changes (bar: < 1.5 s)")
    write_json(args.json, {"runs": runs, "median_pick_to_overlays_s": median, "grid": GRID,
                           "median_control_change_s": typical, "worst_control_change_s": worst})


if __name__ == "__main__":
    main()
