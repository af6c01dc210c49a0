"""benchmarks/load.py with smoke-test settings: both engines run, latencies and slow-job counts are real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import load


def test_load_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "load.json"
    load.main(["--quick", "--duration", "1.5", "--slow", "on", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "baseline" in printed and "scheduled" in printed and "bar (" in printed

    result = json.loads(out.read_text())
    runs = result["runs"]
    assert {r["engine"] for r in runs} == {"baseline", "scheduled"}
    assert "INTERACTIVE" in result["engines"]["baseline"]
    for run in runs:
        assert run["errors"] == []
        assert run["sessions"] == 2 and run["slow"] is True
        fast = run["fast"]
        assert fast["count"] > 0 and run["throughput_per_s"] > 0
        assert 0 < fast["p50_s"] <= fast["p95_s"] <= fast["max_s"]
        for kind in ("predict", *load.FAST_METHODS):
            k = run["per_kind"][kind]
            assert k["count"] > 0 and 0 < k["p50_s"] <= k["p95_s"] <= k["max_s"]
        assert fast["count"] == sum(run["per_kind"][kind]["count"] for kind in run["per_kind"])
        # every interaction got its own image: no cache hit is counted as a latency
        assert run["images"]["used"] == run["per_kind"]["predict"]["count"]
        slow = run["slow_jobs"]
        assert slow["submitted"] > 0
        assert slow["completed"] + slow["failed"] + slow["unfinished_at_end"] == slow["submitted"]
        assert slow["failed"] == 0
        assert run["peak_rss_mb"] > 0
    assert len(result["ratios"]) == 1 and result["ratios"][0]["p95_baseline_over_scheduled"] > 0
    assert result["bar"]["met"] is None  # 20 sessions were not run
