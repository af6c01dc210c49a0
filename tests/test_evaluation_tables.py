"""scripts/evaluation_tables.py renders a real evaluate folder as the Markdown tables of docs/evaluation.md."""

from __future__ import annotations

import json

from scripts.evaluation_tables import COVERAGE, tables
from xai_core.evaluation.runner import run_evaluation


def test_tables_of_a_small_run_have_every_method_finding_and_coverage_row(tmp_path):
    out = tmp_path / "run"
    run_evaluation("demo", "phantom:test", 3, ["gradcam", "random"], ["relevance_mass", "deletion_auc", "sic_auc"],
                   out, seed=0, progress=False, device="cpu", precision="float32", workers=1, baseline_check_n=0)
    summary = json.loads((out / "summary.json").read_text())
    text = tables(out)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    pooled = {line.split(" | ")[0][2:]: line for line in rows}
    mass = summary["gradcam"]["relevance_mass"]
    assert f"{mass['mean']:.3f} [{mass['ci_low']:.3f}, {mass['ci_high']:.3f}]" in pooled["gradcam"]
    findings = set(summary["by_finding"]["gradcam"])
    assert findings, "the cases have positives"
    for finding in findings:
        entry = summary["by_finding"]["random"][finding]["deletion_auc"]
        assert any(line.startswith(f"| {finding} | random | ") and f"{entry['mean']:.3f} ({entry['n']})" in line
                   for line in rows)
    coverage = summary["pic_coverage"]["sic"]["pooled"]
    assert f"| pooled | {' | '.join(str(coverage[c]) for c in COVERAGE)} |" in text
    assert "Baseline check: not run" in text
