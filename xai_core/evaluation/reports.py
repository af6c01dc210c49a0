"""What an evaluation run reports: the summary with bootstrap intervals, PIC median curves, a text table, and the
plots. Each plot is one plotly figure: the Evaluate page shows it, and the run writes it as interactive HTML and as a
static PNG drawn from that same figure (`save_png`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # deferred: slow to import, needed only once a run is summarised
import plotly.graph_objects as go  # deferred: plotly is slow to import, needed only for plots
from matplotlib.figure import Figure
from plotly.colors import qualitative  # deferred: plotly is slow to import, needed only for plots
from plotly.subplots import make_subplots

from xai_core.evaluation.registry import CURVE_SAMPLES, PIC_EMPTY_MAP, PIC_KEPT, PIC_KINDS
from xai_core.metrics.pic import SKIP_RULES
from xai_core.metrics.stats import bootstrap_interval, summarise

if TYPE_CHECKING:  # annotations only
    import pandas as pd
    import plotly.graph_objects as go

# summary.json's keys besides the methods' own (no method is named so): the per-finding summaries and PIC coverage
SUMMARY_KEYS = ("by_finding", "pic_coverage")
# PIC outcomes counted per finding, besides "kept"
PIC_OUTCOMES = {**SKIP_RULES, PIC_EMPTY_MAP: "every method's map of the case was empty (no curve was attempted)"}


def method_summaries(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The pooled entries of a summary.json, {method: {metric: ...}}, without SUMMARY_KEYS."""
    return {k: v for k, v in summary.items() if k not in SUMMARY_KEYS}


def summarise_table(table: Path, methods: list[str], metrics: list[str],
                    invalid: dict[str, list[str]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {metric: {"mean", "ci_low", "ci_high", "n"}}} from the per-image CSV (for SIC/AIC: the mean of
    per-image AUCs; `median_curves` aggregates the curves themselves). `invalid`: {metric: findings} whose rows are
    left out of that metric's mean (the baseline self-check); such an entry says which ("invalid_findings") and how
    many rows ("n_invalid")."""
    frame = pd.read_csv(table)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        rows = frame[frame["method"] == method]
        out[method] = {}
        for m in [*metrics, "seconds"]:
            if m not in rows:
                continue
            left_out = (invalid or {}).get(m, [])
            kept = rows[~rows["finding"].isin(left_out)] if left_out else rows
            out[method][m] = summarise(pd.to_numeric(kept[m], errors="coerce").to_numpy())
            if left_out:
                out[method][m] = {**out[method][m], "invalid_findings": list(left_out),
                                  "n_invalid": int(len(rows) - len(kept))}
    return out


def invalid_reasons(check: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """{metric: {finding: why}} for the invalid (finding, metric) pairs of a baseline self-check (the runner's
    `baseline_self_check`), e.g. "deletion_auc leaves out Effusion: the removed image reads as Effusion (p = 0.97;
    baseline: ...)"."""
    if not check:
        return {}
    out: dict[str, dict[str, str]] = {}
    for metric, findings in check["invalid"].items():
        for finding in findings:
            if check.get("probability"):  # a constant baseline: one image
                detail = f"p = {check['probability'][finding]:.2f}"
            else:
                detail = (f"{check['pushed'][finding]:.0%} of its negatives pushed over the operating point, bar "
                          f"{check['bar']:.0%}; mean p on negatives {check['mean_probability_negatives'][finding]:.2f}")
            out.setdefault(metric, {})[finding] = (f"{metric} leaves out {finding}: the removed image reads as "
                                                   f"{finding} ({detail}; baseline: {check['description']})")
    return out


def summarise_by_finding(table: Path, methods: list[str], metrics: list[str],
                         invalid: dict[str, list[str]] | None = None,
                         reasons: dict[str, dict[str, str]] | None = None
                         ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{method: {finding: {metric: {"mean", "ci_low", "ci_high", "n"}}}} from the per-image CSV, by the same
    `summarise` as the pooled table. The invalid pairs (`invalid`: {metric: findings}) keep their value, since it
    is the evidence, marked "invalid": true with "invalid_reason" (`reasons`, from `invalid_reasons`)."""
    frame = pd.read_csv(table)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for method in methods:
        rows = frame[frame["method"] == method]
        out[method] = {}
        for finding, group in rows.groupby("finding", sort=True):
            cells: dict[str, dict[str, Any]] = {}
            for m in metrics:
                if m not in group:
                    continue
                cells[m] = summarise(pd.to_numeric(group[m], errors="coerce").to_numpy())
                if finding in (invalid or {}).get(m, []):
                    reason = (reasons or {}).get(m, {}).get(finding, "the removal baseline reads as positive")
                    cells[m] = {**cells[m], "invalid": True, "invalid_reason": reason}
            out[method][str(finding)] = cells
    return out


def _outcome_counts(outcomes: pd.Series) -> dict[str, int]:
    counts = {"positives": len(outcomes), PIC_KEPT: int((outcomes == PIC_KEPT).sum())}
    return {**counts, **{rule: int((outcomes == rule).sum()) for rule in PIC_OUTCOMES}}


def pic_coverage(table: Path) -> dict[str, Any]:
    """How many positive (case, finding) pairs each PIC skip rule dropped, per finding and pooled, from the
    per-image CSV's "sic_skip" / "aic_skip" columns: {"rules": {rule: why}, kind: {"pooled": counts,
    "by_finding": {finding: counts}}} with counts {"positives", "kept", rule...: n}. The skip rules do not depend
    on the map, so each pair counts once, whatever the methods ("empty_map" only when every method's map of the
    case was empty). {} without PIC columns."""
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    out: dict[str, Any] = {}
    for kind in PIC_KINDS:
        column = f"{kind}_skip"
        if column not in frame:
            continue
        rows = frame[frame[column] != ""]
        rank = (rows[column] == PIC_EMPTY_MAP).astype(int)  # a pair's outcome: any map's, an empty one last
        pairs = rows.assign(rank=rank).sort_values("rank", kind="stable").drop_duplicates(["case_id", "finding"])
        out[kind] = {"pooled": _outcome_counts(pairs[column]),
                     "by_finding": {str(finding): _outcome_counts(group[column])
                                    for finding, group in pairs.groupby("finding", sort=True)}}
    return {"rules": dict(PIC_OUTCOMES), **out} if out else {}


def summary_document(table: Path, methods: list[str], metrics: list[str], check: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """summary.json of a per-image CSV: the pooled {method: {metric: ...}} (invalid pairs of the baseline self-check
    `check` left out of the means), "by_finding" (invalid pairs marked, with the reason) and "pic_coverage"."""
    invalid = check["invalid"] if check else None
    return {**summarise_table(table, methods, metrics, invalid=invalid),
            "by_finding": summarise_by_finding(table, methods, metrics, invalid, invalid_reasons(check)),
            "pic_coverage": pic_coverage(table)}


def median_curves(curve_file: Path, methods: list[str], *, n_boot: int = 1000, seed: int = 0
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """PIC aggregated as the spec asks: per method and kind (sic, aic), the pointwise median of the per-image
    curves, its AUC with a bootstrap 95% interval over images, n, and the curve itself ("y", CURVE_SAMPLES points
    on x = 0..1)."""
    found: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = {}
    if curve_file.is_file():
        for line in curve_file.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                key = (record["method"], record["kind"])
                found.setdefault(key, {})[(record["case_id"], record["finding"])] = record["y"]  # resumes: last wins
    x = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        for kind in PIC_KINDS:
            ys = np.array(list(found.get((method, kind), {}).values()), np.float64)
            if not len(ys):
                continue
            median = np.median(ys, axis=0)
            auc = float(np.trapezoid(median, x))

            def median_curve_auc(index: np.ndarray, axis: int = -1, ys: np.ndarray = ys) -> np.ndarray:
                # index: resampled image numbers [..., n] (scipy moves the sample axis last)
                picked = ys[np.moveaxis(index, axis, -1).astype(np.intp)]
                return np.trapezoid(np.median(picked, axis=-2), x, axis=-1)

            low, high = (auc, auc) if len(ys) == 1 else bootstrap_interval(
                (np.arange(len(ys)),), median_curve_auc, n_boot=n_boot, seed=seed, vectorized=True, batch=100)
            out.setdefault(method, {})[kind] = {
                "median_curve_auc": auc, "ci_low": low, "ci_high": high, "n": len(ys),
                "y": [round(float(v), 4) for v in median]}
    return out


def print_summary(summary: dict[str, dict[str, dict[str, float]]], metrics: list[str]) -> str:
    """A plain-text table: methods x metrics, mean [95% interval]; '*' marks a mean that leaves out findings the
    baseline self-check found invalid, named under the table."""
    header = f"{'method':<10}" + "".join(f"{m:>24}" for m in metrics)
    lines = [header]
    invalid: dict[str, list[str]] = {}
    for method, values in method_summaries(summary).items():
        cells = []
        for m in metrics:
            v = values.get(m)
            mark = "*" if v and v.get("invalid_findings") else " "
            if mark == "*":
                invalid[m] = v["invalid_findings"]
            cells.append(f"{v['mean']:>8.3f} [{v['ci_low']:.3f},{v['ci_high']:.3f}]{mark}" if v and v["n"] else
                         f"{'n/a':>24}")
        lines.append(f"{method:<10}" + "".join(f"{c:>24}" for c in cells))
    for m, findings in invalid.items():
        lines.append(f"* {m}: left out {', '.join(findings)} (the removal baseline reads as positive; invalid)")
    return "\n".join(lines)


def print_by_finding(by_finding: dict[str, dict[str, dict[str, dict[str, Any]]]], metrics: list[str]) -> str:
    """A plain-text table: one row per method and finding, mean (n) per metric; '!' marks an invalid (finding,
    metric) pair (its value is the evidence, not a result), with the reasons under the table."""
    width = max(12, *(len(m) + 2 for m in metrics)) if metrics else 12
    finding_width = max([14, *(len(f) + 2 for values in by_finding.values() for f in values)])
    lines = [f"{'method':<10}{'finding':<{finding_width}}" + "".join(f"{m:>{width}}" for m in metrics)]
    reasons: dict[str, None] = {}
    for method, findings in by_finding.items():
        for finding, values in findings.items():
            cells = []
            for m in metrics:
                v = values.get(m)
                if not v or not v["n"]:
                    cells.append(f"{'n/a':>{width}}")
                    continue
                mark = "!" if v.get("invalid") else " "
                if v.get("invalid"):
                    reasons[v.get("invalid_reason", f"{m} leaves out {finding}")] = None
                cell = f"{v['mean']:.3f} ({v['n']}){mark}"
                cells.append(f"{cell:>{width}}")
            lines.append(f"{method:<10}{finding:<{finding_width}}" + "".join(cells))
    lines += [f"! {reason} (invalid: left out of the pooled mean)" for reason in reasons]
    return "\n".join(lines)


def print_pic_coverage(coverage: dict[str, Any]) -> str:
    """A plain-text table per PIC kind: per finding and pooled, the positives, how many the curves kept and how
    many each skip rule dropped; the rules' meaning under the tables."""
    if not coverage:
        return ""
    rules = list(coverage["rules"])
    lines = []
    for kind in PIC_KINDS:
        if kind not in coverage:
            continue
        lines.append(f"PIC coverage, {kind.upper()}: positives kept and dropped per skip rule")
        lines.append(f"{'finding':<16}{'positives':>10}{'kept':>7}" + "".join(f"{r:>17}" for r in rules))
        rows = [*coverage[kind]["by_finding"].items(), ("pooled", coverage[kind]["pooled"])]
        for finding, counts in rows:
            lines.append(f"{finding:<16}{counts['positives']:>10}{counts[PIC_KEPT]:>7}"
                         + "".join(f"{counts[r]:>17}" for r in rules))
    lines += [f"  {rule}: {why}" for rule, why in coverage["rules"].items()]
    return "\n".join(lines)


def method_colours(methods: list[str]) -> dict[str, str]:
    """One colour per method (plotly's qualitative palette), the same in every panel, the HTML and the PNG."""
    palette = qualitative.Plotly
    return {method: palette[i % len(palette)] for i, method in enumerate(methods)}


def curve_figure(curves: dict[str, dict[str, dict[str, Any]]]) -> go.Figure:
    """A plotly figure of the median SIC and AIC curves, one line per method."""
    x = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    colours = method_colours(list(curves))
    figure = make_subplots(rows=1, cols=2, subplot_titles=["SIC (median curve)", "AIC (median curve)"])
    for col, kind in enumerate(PIC_KINDS, start=1):
        for method, kinds in curves.items():
            if kind in kinds:
                c = kinds[kind]
                figure.add_trace(go.Scatter(x=x, y=c["y"], mode="lines", legendgroup=method, showlegend=col == 1,
                                            line={"color": colours[method]},
                                            name=f"{method} (AUC {c['median_curve_auc']:.3f}, n={c['n']})"),
                                 row=1, col=col)
        figure.update_xaxes(title_text="normalised information (WebP size)", range=[0, 1], row=1, col=col)
        figure.update_yaxes(title_text="normalised score" if kind == "sic" else "still predicted", range=[0, 1.02],
                            row=1, col=col)
    figure.update_layout(height=380, title="Performance information curves")
    return figure


def box_figure(frame: pd.DataFrame, methods: list[str], metrics: list[str]) -> go.Figure:
    """A plotly figure of per-image box plots, one panel per metric with values."""
    shown = [m for m in metrics if m in frame and pd.to_numeric(frame[m], errors="coerce").notna().any()]
    cols = max(1, min(3, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    colours = method_colours(methods)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=shown or ["no values"])
    for k, metric in enumerate(shown):
        r, c = divmod(k, cols)
        for method in methods:
            values = pd.to_numeric(frame[frame["method"] == method][metric], errors="coerce").dropna()
            figure.add_trace(go.Box(y=values, name=method, showlegend=False, marker_color=colours[method]),
                             row=r + 1, col=c + 1)
    figure.update_layout(height=320 * rows, title="Per-image metrics by method")
    return figure


def write_figure(figure: go.Figure, out: Path, stem: str) -> None:
    """`stem`.html (interactive; plotly.js inlined, so it opens offline) and `stem`.png (`save_png`)."""
    figure.write_html(out / f"{stem}.html", include_plotlyjs=True)
    save_png(figure, out / f"{stem}.png")


def write_curve_plots(curves: dict[str, dict[str, dict[str, Any]]], out: Path) -> None:
    """Median SIC/AIC curves: pic_curves.html and pic_curves.png (nothing when no curve survived)."""
    if curves:
        write_figure(curve_figure(curves), out, "pic_curves")


def write_plots(table: Path, methods: list[str], metrics: list[str], out: Path) -> None:
    """Box plots per metric with values: metrics.html and metrics.png."""
    frame = pd.read_csv(table)
    shown = [m for m in metrics if pd.to_numeric(frame[m], errors="coerce").notna().any()]
    if shown:
        write_figure(box_figure(frame, methods, shown), out, "metrics")


# plotly's default margins (px) around the plotting area, which subplot domains are fractions of
_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}


def save_png(figure: go.Figure, path: Path, *, dpi: int = 90) -> None:
    """A static PNG of a plotly figure of line (Scatter) and Box traces, drawn from the figure's own data and layout:
    subplot domains, subplot and axis titles, axis ranges, trace names and colours. Plotly writes images only
    through Kaleido and a Chrome, which an offline install lacks; matplotlib rasterises the same figure instead (one
    figure definition, no second plot code)."""
    # deferred: matplotlib is slow to import, needed only for image files; no pyplot, so no global backend state

    layout = figure.layout.to_plotly_json()  # axes, titles, sizes; trace data are read from the traces themselves
    margin = {**_MARGIN, **layout.get("margin", {})}
    x_names = sorted((k for k in layout if k.startswith("xaxis")), key=lambda k: int(k[5:] or 1)) or ["xaxis"]
    columns = len({tuple(layout.get(k, {}).get("domain", (0, 1))) for k in x_names})
    width = layout.get("width") or max(700, 420 * columns)
    height = layout.get("height") or 450
    canvas = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)

    def to_figure(px: float, py: float) -> tuple[float, float]:  # paper coordinates -> figure fraction
        return ((margin["l"] + px * (width - margin["l"] - margin["r"])) / width,
                (margin["b"] + py * (height - margin["t"] - margin["b"])) / height)

    for x_name in x_names:
        x_axis = layout.get(x_name, {})
        x_ref = "x" + x_name[5:]
        y_ref = x_axis.get("anchor", "y")
        y_axis = layout.get("yaxis" + y_ref[1:], {})
        (x0, x1), (y0, y1) = x_axis.get("domain", (0, 1)), y_axis.get("domain", (0, 1))
        (fx0, fy0), (fx1, fy1) = to_figure(x0, y0), to_figure(x1, y1)
        axis = canvas.add_axes((fx0, fy0, fx1 - fx0, fy1 - fy0))
        traces = [t for t in figure.data if (t.xaxis or "x") == x_ref and (t.yaxis or "y") == y_ref]
        lines = [t for t in traces if t.type == "scatter"]
        boxes = [t for t in traces if t.type == "box"]
        for trace in lines:
            axis.plot(np.asarray(trace.x, float), np.asarray(trace.y, float), label=trace.name,
                      color=trace.line.color)
        if boxes:
            data = [np.asarray(t.y if t.y is not None else (), float) for t in boxes]
            parts = axis.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=[t.name or "" for t in boxes],
                                 patch_artist=True)
            for patch, trace in zip(parts["boxes"], boxes, strict=True):
                if trace.marker.color:
                    patch.set(facecolor=trace.marker.color, alpha=0.5)
            axis.tick_params(axis="x", rotation=45)
        if not traces:
            titled = any(x0 <= note.get("x", -1) <= x1 and abs(note.get("y", -1) - y1) < 0.05
                         for note in layout.get("annotations", ()))
            if not titled:  # a spare cell of the grid
                axis.set_axis_off()
                continue
            axis.text(0.5, 0.5, "no values", ha="center", va="center", transform=axis.transAxes)
        if x_axis.get("range"):
            axis.set_xlim(*x_axis["range"])
        if y_axis.get("range"):
            axis.set_ylim(*y_axis["range"])
        axis.set_xlabel(x_axis.get("title", {}).get("text", ""), fontsize=8)
        axis.set_ylabel(y_axis.get("title", {}).get("text", ""), fontsize=8)
        axis.tick_params(labelsize=7)
        if any(t.name for t in lines):
            axis.legend(fontsize=7)
    for note in layout.get("annotations", ()):  # subplot titles
        if note.get("xref", "paper") == "paper" and note.get("yref", "paper") == "paper":
            fx, fy = to_figure(note.get("x", 0.5), note.get("y", 1.0))
            canvas.text(fx, fy + 0.01, note.get("text", ""), ha="center", va="bottom", fontsize=9)
    title = layout.get("title", {}).get("text")
    if title:
        canvas.suptitle(title, fontsize=11)
    canvas.savefig(path, dpi=dpi)
