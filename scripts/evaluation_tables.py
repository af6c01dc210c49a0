"""Markdown tables of an `evaluate` results folder (its summary.json and run.json), for docs/evaluation.md.

    python scripts/evaluation_tables.py results/evaluate200 > /tmp/tables.md

Pooled table with 95% intervals, one per-finding table (mean and n), the PIC coverage per finding for SIC and AIC,
and the baseline self-check's invalid pairs. Reads only; prints to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POOLED = ["relevance_mass", "pointing_game", "iou_at_5", "complexity", "sparseness", "deletion_auc", "insertion_auc",
          "faithfulness_corr", "sic_auc", "aic_auc", "gaze_kl", "gaze_nss"]
PER_FINDING = ["relevance_mass", "pointing_game", "complexity", "sparseness", "deletion_auc", "insertion_auc",
               "faithfulness_corr", "sic_auc", "aic_auc"]
COVERAGE = ["positives", "kept", "low_score", "blurred_as_high", "no_information", "empty_map"]


def _value(entry: dict | None, interval: bool) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    text = f"{entry['mean']:.3f}"
    if interval and entry.get("ci_low") is not None:
        text += f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    elif not interval:
        text += f" ({entry['n']})"
    return text + (" !" if entry.get("invalid") else "")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(folder: Path) -> str:
    """The folder's tables as Markdown."""
    summary = json.loads((folder / "summary.json").read_text())
    methods = [m for m in summary if m not in ("by_finding", "pic_coverage")]
    lines = ["Pooled over (case, finding) pairs, mean [95% bootstrap interval]:", "",
             _row(["method", *POOLED]), _row(["---"] * (len(POOLED) + 1))]
    lines += [_row([m, *(_value(summary[m].get(k), True) for k in POOLED)]) for m in methods]
    lines += ["", "Per finding, mean (n); `!` marks a pair left out of the pooled mean by the baseline check:", "",
              _row(["finding", "method", *PER_FINDING]), _row(["---"] * (len(PER_FINDING) + 2))]
    findings = sorted({f for m in methods for f in summary["by_finding"].get(m, {})})
    for finding in findings:
        for m in methods:
            entry = summary["by_finding"].get(m, {}).get(finding, {})
            lines.append(_row([finding, m, *(_value(entry.get(k), False) for k in PER_FINDING)]))
    for kind in ("sic", "aic"):
        coverage = summary.get("pic_coverage", {}).get(kind)
        if not coverage:
            continue
        lines += ["", f"PIC coverage, {kind.upper()}: positives kept and dropped per skip rule", "",
                  _row(["finding", *COVERAGE]), _row(["---"] * (len(COVERAGE) + 1))]
        rows = {**coverage["by_finding"], "pooled": coverage["pooled"]}
        lines += [_row([f, *(str(counts.get(c, 0)) for c in COVERAGE)]) for f, counts in rows.items()]
    run = folder / "run.json"
    if run.is_file():
        check = json.loads(run.read_text()).get("baseline_check")
        if not check:
            lines += ["", "Baseline check: not run (every finding is in every mean, unchecked)."]
        else:
            invalid = {metric: pairs for metric, pairs in (check.get("invalid") or {}).items() if pairs}
            lines += ["", f"Baseline check ({check.get('description')}; bar {check.get('bar')}): "
                      + (f"invalid pairs {invalid}" if invalid else "no (finding, metric) pair invalid.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an evaluate --out folder")
    print(tables(parser.parse_args().folder), end="")


if __name__ == "__main__":
    main()
