"""Markdown tables of the shortcut and plausibility parts of `benchmarks/mimic.py --json`, for docs/mimic.md.

    python scripts/mimic_tables.py results/bench_mimic_shortcut.json > /tmp/tables.md

Shortcut: the reliance table (tag-independent AUROC, paired difference, the tag's causal effect, Grad-CAM near the
tag) and the Pneumothorax table by visibility and tag. Plausibility: pooled and per-finding gaze agreement. Reads
only; prints to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _interval(entry: dict, key: str, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{entry[key]:{sign}.3f} [{entry['ci_low']:{sign}.3f}, {entry['ci_high']:{sign}.3f}]"


def _auroc(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(result: dict) -> str:
    """The shortcut part's tables as Markdown."""
    part = result["shortcut"]
    details = part["pneumothorax"]
    lines = [f"Seed {part['seed']}, {part['n']} test cases with the tag independent of the label "
             f"({details['positives']} Pneumothorax positives, {details['negatives']} negatives):", "",
             _row(["model", "Pneumothorax AUROC", "paired difference vs " + f"`{details['reference']}`",
                   "macro AUROC", "tag's effect on P(Pneumothorax), negatives", "negatives the tag pushes over the "
                   "operating point", "Grad-CAM share near the tag (area share)"]),
             _row(["---"] * 7)]
    for model, reliance in part["models"].items():
        auroc = part["tag_independent_auroc"][model]
        paired = details["models"][model].get("difference_vs_reference")
        share = reliance["gradcam_share_on_tag"]
        lines.append(_row([
            f"`{model}`", _interval(auroc["Pneumothorax"], "auroc"),
            _interval(paired, "difference", signed=True) if paired else "reference",
            f"{auroc['macro']['auroc']:.3f}",
            f"{_interval(reliance['tag_effect_mean'], 'mean', signed=True)} (n {reliance['negatives']})",
            f"{100 * reliance['tag_pushes_over_threshold']:.1f}%",
            f"{_interval(share, 'mean')} (n {share['n']}; area {reliance['tag_region_area_share']:.3f})"]))
    bands = details["band_positives"]
    lines += ["", "Pneumothorax AUROC of each group of positives against all negatives:", "",
              _row(["model", *(f"{band} ({count})" for band, count in bands.items())]),
              _row(["---"] * (len(bands) + 1))]
    for model, entry in details["models"].items():
        lines.append(_row([f"`{model}`", *(_auroc(entry["by_band"][band]) for band in bands)]))
    return "\n".join(lines) + "\n"


def plausibility_tables(result: dict) -> str:
    """The plausibility part's pooled and per-finding tables as Markdown, one pair per method."""
    part = result["plausibility"]
    models = list(part["models"])
    lines: list[str] = []
    for method in part["methods"]:
        lines += [f"{method}, {part['n_cases']} test cases of seed {part['seed']}:", "",
                  _row(["model", "gaze KL (lower better)", "NSS", "CC", "SIM", "relevance mass", "KL change",
                        "NSS change"]), _row(["---"] * 8)]
        for model in models:
            entry = part["models"][model][method]
            cells = [f"`{model}`"] + [_interval(entry["pooled"][m], "mean")
                                      for m in ("gaze_kl", "gaze_nss", "gaze_cc", "gaze_sim", "relevance_mass")]
            change = entry["change_vs_reference"]
            for metric in ("gaze_kl", "gaze_nss"):
                c = change[metric] if change else None
                cells.append(f"{100 * c['change']:+.0f}% [{100 * c['ci_low']:+.0f}, {100 * c['ci_high']:+.0f}]"
                             if c else "reference")
            lines.append(_row(cells))
        findings = sorted(part["models"][models[0]][method]["by_finding"])
        lines += ["", f"Per finding ({method}; gaze KL / NSS / relevance mass, means):", "",
                  _row(["finding (n)", *(f"`{m}`" for m in models)]), _row(["---"] * (len(models) + 1))]
        for finding in findings:
            n = part["models"][models[0]][method]["by_finding"][finding]["gaze_kl"]["n"]
            cells = [f"{finding} ({n})"]
            for model in models:
                by = part["models"][model][method]["by_finding"][finding]
                cells.append(f"{by['gaze_kl']['mean']:.2f} / {by['gaze_nss']['mean']:.2f} / "
                             f"{by['relevance_mass']['mean']:.3f}")
            lines.append(_row(cells))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the tables of one benchmark JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a benchmarks/mimic.py --json file with the shortcut part")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text())
    if "shortcut" in result:
        print(tables(result), end="")
    if "plausibility" in result:
        print(plausibility_tables(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
