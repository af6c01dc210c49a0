"""Case store (SQLite, WAL) and the HTML case report."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from xai_core.report import case_report_html
from xai_core.store import CaseStore


def test_verdicts_survive_a_new_connection_and_keep_their_history(tmp_path):
    path = tmp_path / "cases.sqlite"
    store = CaseStore(path)
    store.add_case("a" * 64, "sample 1", source="phantom", shape=(256, 256), thumbnail=b"png")
    store.add_case("a" * 64, "renamed", source="phantom")  # idempotent: the first record stays
    store.add_verdict("a" * 64, "demo", "Effusion", "gradcam", "disagree", " too diffuse ")
    store.add_verdict("a" * 64, "demo", "Effusion", "gradcam", "agree", "on second look")
    del store
    reopened = CaseStore(path)
    assert [c["label"] for c in reopened.cases()] == ["sample 1"]
    history = reopened.verdicts("a" * 64)
    assert [v.verdict for v in history] == ["disagree", "agree"] and history[0].comment == "too diffuse"
    assert reopened.latest_verdicts("a" * 64)[("demo", "Effusion", "gradcam")].verdict == "agree"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_verdicts_and_unknown_cases_are_refused(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    store.add_case("b" * 64, "case")
    with pytest.raises(ValueError, match="agree, disagree, unsure"):
        store.add_verdict("b" * 64, "demo", "Effusion", "gradcam", "maybe")
    with pytest.raises(sqlite3.IntegrityError):
        store.add_verdict("c" * 64, "demo", "Effusion", "gradcam", "agree")


def test_concurrent_writers_lose_nothing(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    store.add_case("d" * 64, "case")

    def write(i: int) -> None:
        for j in range(20):
            store.add_verdict("d" * 64, "demo", "Nodule", f"m{i}", "unsure", f"{i}-{j}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.verdicts("d" * 64)) == 80


def test_results_are_replaced_not_duplicated_and_the_report_has_everything(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    sha = "e" * 64
    store.add_case(sha, "phantom case 3", thumbnail=b"\x89PNG thumb")
    findings = [{"label": "Effusion", "probability": 0.91, "threshold": 0.5, "positive": True}]
    store.save_result(sha, "demo", "prediction", {"findings": findings, "demo": True})
    store.save_result(sha, "demo", "explanation", {"seconds": 0.5}, target="Effusion", method="gradcam", overlay=b"1")
    store.save_result(sha, "demo", "explanation", {"seconds": 0.2}, target="Effusion", method="gradcam", overlay=b"2")
    assert len(store.results(sha)) == 2
    store.add_verdict(sha, "demo", "Effusion", "gradcam", "agree", "<b>fine</b>", "dr. who")
    html = case_report_html(store, sha)
    assert "Effusion" in html and "0.910" in html and "not for clinical use" in html
    assert "gradcam · Effusion · demo · 0.20 s" in html and "&lt;b&gt;fine&lt;/b&gt;" in html
    assert html.count("data:image/png;base64,") == 2
    with pytest.raises(KeyError, match="no case"):
        case_report_html(store, "f" * 64)
