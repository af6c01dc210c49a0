"""Evaluate page: run the evaluation suite over a data set and read the numbers and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import access, layout, state
from ui.methods import method_colour, method_name, methods_help
from xai_core.errors import XaiError
from xai_core.evaluation import (
    ALL_METRICS,
    DEFAULT_GAZE_KERNEL,
    DEFAULT_REMOVAL,
    METRIC_GROUPS,
    box_figure,
    curve_figure,
    get_metric,
    method_summaries,
    run_evaluation,
)
from xai_core.explainers import get_explainer, list_explainers

RESULTS = Path("results") / "dashboard"
DEFAULT_METHODS = ("gradcam", "random")
DEFAULT_GROUPS = ("localisation", "shape")


def _settings_line(run: dict) -> str:
    """What the run's removal metrics and gaze heatmaps were computed with, and what the baseline check covered."""
    kernel = run.get("gaze_kernel")
    kernel_name = kernel.get("name", "unknown") if isinstance(kernel, dict) else (kernel or "unknown")
    parts = [f"Removal: {run.get('removal', 'unknown')}", f"gaze kernel: {kernel_name}"]
    check = run.get("baseline_check")
    if check:
        data = check["data"]
        parts.append(f"baseline self-check: the {check['recipe']} baseline on {data['indices'][1]} phantom "
                     f"{data['split']} cases (seed {data['seed']})")
        if check.get("unchecked"):
            parts.append("not checked (no phantom ground truth): " + ", ".join(check["unchecked"]))
    else:
        parts.append("no baseline self-check (no removal metric, or it was skipped)")
    return " · ".join(parts) + "."


def _metric_help(groups: list[str]) -> str:
    """Each metric of the groups with its direction and description (from the metric registry)."""
    lines = []
    for group in groups or list(METRIC_GROUPS):
        for name in METRIC_GROUPS[group]:
            metric = get_metric(name)
            arrow = "higher is better" if metric.direction == "higher" else "lower is better"
            lines.append(f"- **{name}** ({group}, {arrow}): {metric.description}")
    return "\n".join(lines)


def _recolour(figure, curves: dict | None = None):
    """Fixed method colours in every plot; the AIC curves get their own legend entries with their AUC."""
    for trace in figure.data:
        method = trace.legendgroup or trace.name
        if method not in METHOD_IDS:
            continue
        if trace.type == "box":
            trace.update(marker_color=method_colour(method), line_color=method_colour(method),
                         name=method_name(method))
        else:
            trace.update(line_color=method_colour(method))
            if curves is not None and trace.xaxis == "x2" and "aic" in curves.get(method, {}):
                c = curves[method]["aic"]
                trace.update(showlegend=True, line_dash="dash",
                             name=f"{method_name(method)} AIC (AUC {c['median_curve_auc']:.3f}, n={c['n']})")
            elif curves is not None and "sic" in curves.get(method, {}):
                c = curves[method]["sic"]
                trace.update(name=f"{method_name(method)} SIC (AUC {c['median_curve_auc']:.3f}, n={c['n']})")
    return figure


METHOD_IDS = set(list_explainers())


def _defaults(available: list[str]) -> None:
    """Context defaults that depend on what this model can run (never a default missing from the options)."""
    chosen = st.session_state.get("eval_methods")
    if chosen is None or not set(chosen) <= set(available):
        st.session_state["eval_methods"] = [m for m in (chosen or DEFAULT_METHODS) if m in available]
    if st.session_state.get("eval_groups") is None:
        st.session_state["eval_groups"] = [g for g in DEFAULT_GROUPS if g in METRIC_GROUPS]


def _zero_scored_message(run: dict, data: str) -> str:
    without = run.get("cases_without_positives", 0)
    text = f"0 cases were scored on {data}."
    if without:
        text += (f" {without} case(s) had no finding the model knows (metrics are computed for the positive findings "
                 f"of each case): check that labels.csv names findings such as "
                 f"{', '.join(run.get('labels', [])[:5]) or 'the model labels'}, separated by '|'.")
    else:
        text += " No image of labels.csv was found under images/ (file names must match the image column)."
    return text


POOLED = "Pooled (all findings)"
INVALID = "⚠ invalid"


def _cell(value: dict | None) -> str:
    """A summary entry as shown: mean [95% CI], "n/a" where undefined (null in summary.json)."""
    if not value or not value.get("n") or value.get("mean") is None:
        return "n/a"
    low, high = value.get("ci_low"), value.get("ci_high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{value['mean']:.3f}{interval}"


def _summary_tables(pooled: dict, by_finding: dict) -> None:
    """The summary pooled or for one finding (a selectbox), with the invalid (finding, metric) pairs of the
    baseline self-check marked and their reasons: left out of the pooled means (*), shown but marked per finding."""
    findings = sorted({finding for values in by_finding.values() for finding in values})
    options = [POOLED, *findings]
    if st.session_state.get("eval_view") not in options:
        st.session_state["eval_view"] = POOLED
    view = st.selectbox("Rows", options, key="eval_view",
                        help="Pooled over every positive finding, or one finding's rows (the same summaries per "
                             "finding: mean [95% CI] over its cases).")
    reasons = {cell["invalid_reason"]: finding for values in by_finding.values()
               for finding, cells in values.items() for cell in cells.values() if cell.get("invalid")}
    if view == POOLED:
        rows = [{"method": method_name(method),
                 **{metric: _cell(v) + (" *" if v.get("invalid_findings") else "")
                    for metric, v in values.items() if metric in ALL_METRICS or metric == "seconds"}}
                for method, values in pooled.items()]
    else:
        rows = [{"method": method_name(method),
                 **{metric: _cell(v) + (f" {INVALID}" if v.get("invalid") else "")
                    for metric, v in values.get(view, {}).items() if metric in ALL_METRICS}}
                for method, values in by_finding.items() if view in values]
        reasons = {reason: finding for reason, finding in reasons.items() if finding == view}
    st.dataframe(rows, hide_index=True, width="stretch")
    if reasons:
        marked = "* marks a mean that leaves them out" if view == POOLED else f"{INVALID} marks them"
        st.warning("The baseline self-check found (finding, metric) pairs whose removal baseline reads as the "
                   f"finding: their values carry no signal, so the pooled means leave them out ({marked}).\n\n"
                   + "\n".join(f"- {reason}" for reason in reasons), icon=":material/block:")


def _pic_coverage(coverage: dict) -> None:
    """Per finding and pooled: the positives each PIC curve kept and how many each skip rule dropped."""
    if not coverage:
        return
    rules = coverage["rules"]
    rows = [{"curve": kind.upper(), "finding": finding, **counts}
            for kind in ("sic", "aic") if kind in coverage
            for finding, counts in [*coverage[kind]["by_finding"].items(), ("pooled", coverage[kind]["pooled"])]]
    st.markdown("**PIC coverage**: positive (case, finding) pairs the SIC/AIC curves kept, and how many each skip "
                "rule dropped")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("; ".join(f"{rule}: {why}" for rule, why in rules.items())
               + ". The SIC/AIC means and median curves are over the kept pairs only.")


def render() -> None:
    """The Evaluate page."""
    access.require("evaluate")  # researchers and admins only (app.py does not list the page for reviewers)
    layout.start("Evaluate", uses_finding=False)
    model = state.current_model()
    problem = state.model_problem(model)
    if problem:
        st.error(f"{model} cannot be evaluated here: {problem}", icon=":material/error:")
        st.caption("Pick another model in the sidebar; models that cannot run are listed in its help.")
        return
    available = [m for m in list_explainers() if state.method_available(model, m)]
    _defaults(available)
    choices = access.evaluation_data()
    if st.session_state.get("eval_data") not in choices:
        st.session_state["eval_data"] = next(iter(choices))
    c1, c2, c3 = st.columns(3)
    with c1:
        data = choices[st.selectbox("Data", list(choices), key="eval_data",
                                    help="The phantom splits, and the folders (with labels.csv: image,labels or "
                                         "NIH's Image Index,Finding Labels) the server lists in XAI_EVAL_FOLDERS; "
                                         "no other server folder can be read.")]
        n = st.number_input("Cases", 1, 5000, key="eval_n")
    with c2:
        methods = st.multiselect("Methods", available, key="eval_methods", format_func=method_name,
                                 help=methods_help(available, {m: get_explainer(m).cost for m in available}))
    with c3:
        groups = st.multiselect("Metric groups", list(METRIC_GROUPS), key="eval_groups",
                                help="pic and faithfulness run the model many times per map.\n\n"
                                     + _metric_help(list(METRIC_GROUPS)))
    metrics = [m for g in groups for m in METRIC_GROUPS[g]]
    # the removal operator and gaze kernel in the name: a folder is only resumed with the settings it was made with
    out = RESULTS / f"{model}_{data.replace(':', '_').replace('/', '_')}_{n}_{'-'.join(sorted(methods))}_" \
                    f"{'-'.join(sorted(groups))}_{DEFAULT_REMOVAL}_{DEFAULT_GAZE_KERNEL}"
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
    if shown != out:
        st.caption("These results are from an earlier run with other settings: press Run for the current ones.")
    summary = json.loads((shown / "summary.json").read_text())
    per_image = pd.read_csv(shown / "per_image.csv")
    if per_image.empty:
        run_file = shown / "run.json"
        run = json.loads(run_file.read_text()) if run_file.is_file() else {}
        run.setdefault("labels", list(state.engine().model(model).card.labels))
        st.warning(_zero_scored_message(run, data), icon=":material/search_off:")
        return
    pooled = method_summaries(summary)
    _summary_tables(pooled, summary.get("by_finding", {}))
    run_file = shown / "run.json"
    st.caption(_settings_line(json.loads(run_file.read_text()) if run_file.is_file() else {}))
    directions = {m: get_metric(m).direction for m in ALL_METRICS if m in per_image}
    st.caption("Direction: " + ", ".join(f"{m} {'↑' if d == 'higher' else '↓'}" for m, d in directions.items())
               + " (↑ higher is better, ↓ lower is better); the table gives mean [95% CI].")
    _pic_coverage(summary.get("pic_coverage", {}))
    st.plotly_chart(_recolour(box_figure(per_image, list(pooled), [m for m in ALL_METRICS if m in per_image])),
                    width="stretch", key="eval_boxes")
    curves_file = shown / "pic_curves.json"
    curves = json.loads(curves_file.read_text()) if curves_file.is_file() else {}
    if curves:
        st.caption("SIC (solid) and AIC (dashed) aggregated as median curves over the images the skip rules keep "
                   "(AUC of the median curve in the legend); the table above gives the mean of per-image AUCs.")
        st.plotly_chart(_recolour(curve_figure(curves), curves), width="stretch", key="eval_curves")
    st.download_button("Per-image CSV", per_image.to_csv(index=False), file_name="per_image.csv", key="eval_csv")
    st.download_button("Summary JSON", json.dumps(summary, indent=2), file_name="summary.json", key="eval_json")


render()
