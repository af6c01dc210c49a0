"""Case store (SQLite, WAL: schema versions, failures, durability, backups, names) and the HTML case report."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT
from xai_core.errors import InputError, StoreError
from xai_core.report import case_report_html
from xai_core.store import MAX_LABEL, SCHEMA_VERSION, CaseStore, backup_store, case_name, identifying_parts


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


# ---------------------------------------------------------------------------------------------- opening, schema

LEGACY_SCHEMA = """
CREATE TABLE cases (sha256 TEXT PRIMARY KEY, label TEXT NOT NULL, source TEXT, width INTEGER, height INTEGER,
                    thumbnail BLOB, created TEXT NOT NULL);
CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL REFERENCES cases(sha256),
                      model TEXT NOT NULL, kind TEXT NOT NULL, target TEXT, method TEXT, payload TEXT NOT NULL,
                      overlay BLOB, created TEXT NOT NULL, UNIQUE (sha256, model, kind, target, method));
CREATE TABLE verdicts (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL REFERENCES cases(sha256),
                       model TEXT NOT NULL, target TEXT NOT NULL, method TEXT NOT NULL,
                       verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
                       comment TEXT NOT NULL DEFAULT '', reviewer TEXT NOT NULL DEFAULT '', created TEXT NOT NULL);
CREATE INDEX verdicts_by_case ON verdicts (sha256, created);
"""


def _file_bytes(path) -> bytes:
    """The store file with its WAL and shared-memory files (everything SQLite keeps on disk)."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal"),
                                             path.with_name(path.name + "-shm")) if p.exists())


def _filled_store(path, cases: int = 40) -> CaseStore:
    store = CaseStore(path)
    for i in range(cases):
        sha = f"{i:064x}"
        store.add_case(sha, case_name(sha), source="upload", thumbnail=bytes(range(256)) * 8)
        store.add_verdict(sha, "demo", "Effusion", "gradcam", "agree", f"comment {i} " * 20, "alice")
    store.close()
    return store


def test_a_new_store_has_the_current_schema_and_verdicts_carry_role_and_login(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    assert store.schema_version == SCHEMA_VERSION
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.add_case("a" * 64, case_name("a" * 64))
    store.add_verdict("a" * 64, "demo", "Nodule", "gradcam", "unsure", "", "alice", role="reviewer", auth="password")
    [verdict] = CaseStore(tmp_path / "s.sqlite").verdicts("a" * 64)
    assert (verdict.reviewer, verdict.role, verdict.auth) == ("alice", "reviewer", "password")
    assert store.status()["integrity"] == "ok" and store.status()["verdicts"] == 1


def test_a_store_from_before_versioning_is_migrated_and_loses_uploaded_file_names(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(LEGACY_SCHEMA)
    upload, sample = "1" * 64, "2" * 64
    db.execute("INSERT INTO cases VALUES (?, 'DOE^JOHN_123456.dcm', 'upload', 10, 10, x'00', '2025-01-01')", (upload,))
    db.execute("INSERT INTO cases VALUES (?, 'samples-0-000007 (phantom)', 'phantom', 10, 10, NULL, '2025-01-01')",
               (sample,))
    db.execute("INSERT INTO verdicts (sha256, model, target, method, verdict, comment, reviewer, created) "
               "VALUES (?, 'demo', 'Effusion', 'gradcam', 'agree', 'old', 'dr who', '2025-01-02')", (upload,))
    db.close()
    assert b"DOE^JOHN" in _file_bytes(path)

    store = CaseStore(path)
    assert store.schema_version == SCHEMA_VERSION
    labels = {c["sha256"]: c["label"] for c in store.cases()}
    assert labels == {upload: f"case-{upload[:12]}", sample: "samples-0-000007 (phantom)"}
    [old] = store.verdicts(upload)
    assert (old.verdict, old.comment, old.reviewer, old.role) == ("agree", "old", "dr who", "")
    store.add_verdict(upload, "demo", "Effusion", "gradcam", "disagree", "", "alice", role="admin", auth="local")
    store.close()
    assert b"DOE^JOHN" not in _file_bytes(path), "the file name is gone from the file, its WAL and free pages"
    assert CaseStore(path).schema_version == SCHEMA_VERSION, "reopening a migrated store changes nothing"


def test_a_store_from_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    CaseStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"newer version of the dashboard.*Upgrade the dashboard"):
        CaseStore(path)
    assert path.read_bytes() == before


def test_an_sqlite_file_that_is_not_a_case_store_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"not a case store.*invoices.*XAI_STORE_PATH"):
        CaseStore(path)
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")] == ["invoices"]


def _first_cell_points_at(data: bytes, page: int) -> bytes:
    """A leaf page whose first cell pointer repeats the second (two cells claim the same bytes)."""
    return data[page + 10:page + 12]


@pytest.mark.parametrize("cases,offset,damage,found", [
    # a leaf's cell pointers claim the same bytes: quick_check lists the problems
    (3, 8, _first_cell_points_at, r"damaged: the integrity check found .*Rowid 2 out of order.*Multiple uses"),
    # an interior page's cell pointers out of range: the check itself fails
    (40, 12, lambda data, page: b"\xff" * 48, r"damaged \(database disk image is malformed\)"),
])
def test_a_store_with_a_corrupt_btree_is_refused_before_any_write(tmp_path, cases, offset, damage, found):
    path = tmp_path / "s.sqlite"
    _filled_store(path, cases=cases)
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'verdicts'").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())  # the cell pointers of the verdicts table's root page
    start = (root - 1) * page_size
    patch = damage(bytes(data), start)
    data[start + offset:start + offset + len(patch)] = patch
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=found) as caught:
        CaseStore(path)
    assert "restore the latest backup" in str(caught.value) and ".recover" in str(caught.value)
    assert path.read_bytes() == bytes(data), "nothing was written to the damaged store"


def test_a_file_that_is_not_sqlite_is_reported_as_damaged(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError, match=r"is damaged .*file is not a database"):
        CaseStore(path)


def _read_only_connect(self):
    return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)


def test_a_read_only_store_is_refused_at_open_with_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    _filled_store(path, cases=2)
    monkeypatch.setattr(CaseStore, "_connect", _read_only_connect)  # SQLite read-only mode (root ignores chmod)
    with pytest.raises(StoreError, match=r"is read-only .*so opening it failed. Make the file and its folder writable"):
        CaseStore(path)


def test_a_store_that_turns_read_only_refuses_the_verdict_clearly(tmp_path, monkeypatch):
    store = _filled_store(tmp_path / "s.sqlite", cases=1)
    monkeypatch.setattr(CaseStore, "_connect", _read_only_connect)
    with pytest.raises(StoreError, match=r"read-only .*saving the verdict failed"):
        store.add_verdict(f"{0:064x}", "demo", "Effusion", "gradcam", "agree")
    assert len(store.verdicts(f"{0:064x}")) == 1, "reads still work"


def test_a_full_disk_is_reported_and_what_was_saved_is_intact(tmp_path):
    path = tmp_path / "s.sqlite"
    store = _filled_store(path, cases=3)
    with store._connection() as db:  # SQLite's own SQLITE_FULL: no page beyond the current size
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match=r"disk holding the case store .* is full .*Free some space"):
        store.add_case("f" * 64, case_name("f" * 64), thumbnail=b"\x01" * 200_000)
    store.close()
    reopened = CaseStore(path)
    assert len(reopened.cases()) == 3 and reopened.case("f" * 64) is None


def test_verdicts_are_written_with_synchronous_full_and_results_with_normal(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    statements: list[str] = []
    with store._connection() as db:
        db.set_trace_callback(statements.append)
    store.add_case("a" * 64, case_name("a" * 64))
    store.save_result("a" * 64, "demo", "prediction", {"findings": []})
    assert not any("synchronous" in s for s in statements)
    store.add_verdict("a" * 64, "demo", "Nodule", "gradcam", "agree")
    sync = [s for s in statements if "synchronous" in s or s.startswith("INSERT INTO verdicts")]
    assert [s.split(" (")[0] for s in sync] == ["PRAGMA synchronous=FULL", "INSERT INTO verdicts",
                                                "PRAGMA synchronous=NORMAL"]
    with store._connection() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1, "NORMAL again for everything else"


WRITER = """
import sys
from xai_core.store import CaseStore, case_name
store = CaseStore(sys.argv[1])
store.add_case("a" * 64, case_name("a" * 64))
for i in range(100000):
    store.add_verdict("a" * 64, "demo", "Nodule", "gradcam", "agree", str(i))
    print(i, flush=True)
"""


def test_verdicts_reported_saved_survive_kill_9(tmp_path):
    path = tmp_path / "s.sqlite"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 150:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    store = CaseStore(path)  # opens: integrity check passes after the kill
    comments = {int(v.comment) for v in store.verdicts("a" * 64)}
    assert set(range(acknowledged + 1)) <= comments


# ---------------------------------------------------------------------------------------------- backups

def test_backup_is_a_consistent_checked_single_file_copy(tmp_path):
    path = tmp_path / "s.sqlite"
    store = _filled_store(path, cases=5)
    target = store.backup(tmp_path / "backups" / "b.sqlite")
    assert target == tmp_path / "backups" / "b.sqlite"
    assert sqlite3.connect(target).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    copy = CaseStore(target)
    assert [c["sha256"] for c in copy.cases()] == [c["sha256"] for c in store.cases()]
    assert [v.comment for v in copy.verdicts(f"{3:064x}")] == [v.comment for v in store.verdicts(f"{3:064x}")]
    with pytest.raises(InputError, match="already exists"):
        store.backup(target)
    store.add_verdict(f"{3:064x}", "demo", "Effusion", "gradcam", "unsure")
    store.backup(target, overwrite=True)
    assert len(CaseStore(target).verdicts(f"{3:064x}")) == 2
    assert not list((tmp_path / "backups").glob(".*partial")), "no partial file is left behind"
    with pytest.raises(InputError, match="the store itself"):
        store.backup(path, overwrite=True)


def test_backup_while_another_thread_writes_loses_nothing_it_reports(tmp_path):
    store = _filled_store(tmp_path / "s.sqlite", cases=1)
    sha = f"{0:064x}"
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            store.add_verdict(sha, "demo", "Effusion", "gradcam", "agree")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        copies = [store.backup(tmp_path / f"b{i}.sqlite") for i in range(3)]
    finally:
        done.set()
        writer.join()
    counts = [len(CaseStore(c).verdicts(sha)) for c in copies]
    assert counts == sorted(counts) and counts[0] >= 1
    assert all(sqlite3.connect(c).execute("PRAGMA integrity_check").fetchone()[0] == "ok" for c in copies)


def test_backup_bytes_and_backup_store_and_their_errors(tmp_path):
    path = tmp_path / "s.sqlite"
    store = _filled_store(path, cases=2)
    data = store.backup_bytes()
    memory = sqlite3.connect(":memory:")
    memory.deserialize(data)
    assert memory.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 2
    assert backup_store(tmp_path / "cli.sqlite", source=path) == tmp_path / "cli.sqlite"
    assert len(CaseStore(tmp_path / "cli.sqlite").cases()) == 2
    with pytest.raises(StoreError, match="no case store at"):
        backup_store(tmp_path / "x.sqlite", source=tmp_path / "missing.sqlite")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError, match=r"backup could not be written to .*store itself is unchanged"):
        store.backup(tmp_path / "a-file" / "b.sqlite")


# ---------------------------------------------------------------------------------------------- names

def test_cases_are_named_by_content_hash_and_labels_never_repeat_the_file_name():
    sha = hashlib.sha256(b"pixels").hexdigest()
    assert case_name(sha) == f"case-{sha[:12]}"
    assert case_name(sha, "  left   effusion\n follow-up ") == f"case-{sha[:12]} · left effusion follow-up"
    assert len(case_name(sha, "x" * 500)) == len(f"case-{sha[:12]} · ") + MAX_LABEL
    parts = identifying_parts("DOE^JOHN_123456.dcm")
    assert {"DOE^JOHN_123456.dcm", "DOE^JOHN_123456", "JOHN", "123456"} <= set(parts)
    for label in ("DOE^JOHN_123456", "john's film", "follow-up of 123456"):
        assert case_name(sha, label, forbidden=parts) == f"case-{sha[:12]}"
    assert case_name(sha, "left effusion", forbidden=parts) == f"case-{sha[:12]} · left effusion"
    with pytest.raises(InputError, match="sha256"):
        case_name("DOE^JOHN_123456.dcm")


def test_a_case_is_keyed_by_its_hash_never_by_a_name(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    with pytest.raises(InputError, match="sha256 of its content"):
        store.add_case("DOE^JOHN_123456.dcm", "DOE^JOHN_123456.dcm")
    assert store.cases() == []
