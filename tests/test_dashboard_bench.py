"""benchmarks/dashboard.py on one sample: the pick reaches the overlays, and every control change redraws six tiles."""

from __future__ import annotations

from benchmarks import dashboard


def test_dashboard_bench_times_a_pick_and_each_control_change_on_six_tiles():
    run = dashboard.one_run(0)
    assert 0 < run["pick_to_findings_s"] <= run["pick_to_overlays_s"]
    assert run["methods"] == ["nemt", "gradcam"]
    assert set(run["control_change_s"]) == set(dashboard.CONTROLS)
    assert all(seconds > 0 for seconds in run["control_change_s"].values())
