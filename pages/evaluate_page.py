"""Evaluate page: run the evaluation suite over a data set and read the numbers and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import access, state
from xai_core.errors import XaiError
from xai_core.evaluation import ALL_METRICS, METRIC_GROUPS, box_figure, curve_figure, run_evaluation
from xai_core.explainers import list_explainers

RESULTS = Path("results") / "dashboard"


def render() -> None:
    """The Evaluate page."""
    st.title("Evaluate")
    access.require("evaluate")  # researchers and admins only (app.py does not list the page for reviewers)
    model = state.current_model()
    c1, c2, c3 = st.columns(3)
    with c1:
        choices = access.evaluation_data()
        data = choices[st.selectbox("Data", list(choices), key="eval_data",
                                    help="The phantom splits, and the folders (with labels.csv) the server lists in "
                                         "XAI_EVAL_FOLDERS; no other server folder can be read.")]
        n = st.number_input("Cases", 1, 5000, 20, key="eval_n")
    with c2:
        methods = st.multiselect("Methods", [m for m in list_explainers() if state.method_available(model, m)],
                                 default=["gradcam", "random"], key="eval_methods")
    with c3:
        groups = st.multiselect("Metric groups", list(METRIC_GROUPS), default=["localisation", "shape"],
                                key="eval_groups", help="pic and faithfulness run the model many times per map")
    metrics = [m for g in groups for m in METRIC_GROUPS[g]]
    out = RESULTS / f"{model}_{data.replace(':', '_').replace('/', '_')}_{n}_{'-'.join(sorted(methods))}_" \
                    f"{'-'.join(sorted(groups))}"
    if st.button("Run", type="primary", key="eval_run", disabled=not (methods and metrics)):
        bar = st.progress(0.0, text="Evaluating…")
        try:
            run_evaluation(model, data, int(n), methods, metrics, out, progress=False,
                           on_progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} cases"),
                           allow_random_weights=state.engine().allow_random_weights)
        except (XaiError, OSError) as exc:
            st.error(f"The evaluation could not run: {exc}")
            return
        bar.empty()
        st.session_state["eval_out"] = str(out)
    shown = Path(st.session_state.get("eval_out", ""))
    if not (shown / "summary.json").is_file():
        st.info("Choose data, methods and metrics, then Run. Results are kept under results/dashboard/ and a rerun "
                "resumes where it stopped.")
        return
    summary = json.loads((shown / "summary.json").read_text())
    rows = [{"method": method, **{metric: f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                                  for metric, v in values.items() if metric in ALL_METRICS or metric == "seconds"}}
            for method, values in summary.items()]
    st.dataframe(rows, hide_index=True, width="stretch")
    per_image = pd.read_csv(shown / "per_image.csv")
    st.plotly_chart(box_figure(per_image, list(summary), [m for m in ALL_METRICS if m in per_image]),
                    width="stretch", key="eval_boxes")
    curves_file = shown / "pic_curves.json"
    curves = json.loads(curves_file.read_text()) if curves_file.is_file() else {}
    if curves:
        st.caption("SIC/AIC aggregated as median curves over the images the skip rules keep (AUC of the median "
                   "curve in the legend); the table above gives the mean of per-image AUCs.")
        st.plotly_chart(curve_figure(curves), width="stretch", key="eval_curves")
    st.download_button("Per-image CSV", per_image.to_csv(index=False), file_name="per_image.csv", key="eval_csv")
    st.download_button("Summary JSON", json.dumps(summary, indent=2), file_name="summary.json", key="eval_json")


render()
