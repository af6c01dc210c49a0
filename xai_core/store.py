"""The case store: cases (by content hash, no identifiers), saved results and reviewer verdicts, in SQLite (WAL).

Every write is its own committed transaction, so a verdict survives a reload, a restart or a crash right after it.
The file is `$XAI_DATA_DIR/cases.sqlite` (default `data/cases.sqlite` next to the project) or `$XAI_STORE_PATH`.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = ("agree", "disagree", "unsure")
SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    source TEXT,
    width INTEGER,
    height INTEGER,
    thumbnail BLOB,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL REFERENCES cases(sha256),
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    method TEXT,
    payload TEXT NOT NULL,
    overlay BLOB,
    created TEXT NOT NULL,
    UNIQUE (sha256, model, kind, target, method)
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL REFERENCES cases(sha256),
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
    comment TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_by_case ON verdicts (sha256, created);
"""


def default_path() -> Path:
    """$XAI_STORE_PATH, else $XAI_DATA_DIR/cases.sqlite, else data/cases.sqlite in the project."""
    if os.environ.get("XAI_STORE_PATH"):
        return Path(os.environ["XAI_STORE_PATH"])
    return Path(os.environ.get("XAI_DATA_DIR", ROOT / "data")) / "cases.sqlite"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Verdict:
    sha256: str
    model: str
    target: str
    method: str
    verdict: str
    comment: str
    reviewer: str
    created: str


class CaseStore:
    """Thread-safe access to one SQLite file (one connection per thread, WAL journal)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        yield db

    def add_case(self, sha256: str, label: str, *, source: str = "", shape: tuple[int, int] | None = None,
                 thumbnail: bytes | None = None) -> None:
        """Record a case (idempotent: the first label and thumbnail are kept)."""
        height, width = shape if shape else (None, None)
        with self._connection() as db:
            db.execute("INSERT OR IGNORE INTO cases VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sha256, label, source, width, height, thumbnail, _now()))

    def save_result(self, sha256: str, model: str, kind: str, payload: dict[str, Any], *, target: str = "",
                    method: str = "", overlay: bytes | None = None) -> None:
        """Store (or replace) a result: kind 'prediction', 'explanation', 'certainty', ..."""
        with self._connection() as db:
            db.execute("INSERT INTO results (sha256, model, kind, target, method, payload, overlay, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256, model, kind, target, method) DO UPDATE "
                       "SET payload = excluded.payload, overlay = excluded.overlay, created = excluded.created",
                       (sha256, model, kind, target, method, json.dumps(payload), overlay, _now()))

    def add_verdict(self, sha256: str, model: str, target: str, method: str, verdict: str, comment: str = "",
                    reviewer: str = "") -> Verdict:
        """Append a verdict (history is kept; the latest per explanation counts)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}; got '{verdict}'")
        record = Verdict(sha256, model, target, method, verdict, comment.strip(), reviewer.strip(), _now())
        with self._connection() as db:
            db.execute("INSERT INTO verdicts (sha256, model, target, method, verdict, comment, reviewer, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (record.sha256, record.model, record.target, record.method, record.verdict, record.comment,
                        record.reviewer, record.created))
        return record

    def cases(self) -> list[dict[str, Any]]:
        """The worklist: every case with its number of results and verdicts, newest first."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT c.sha256, c.label, c.source, c.width, c.height, c.created, "
                "(SELECT COUNT(*) FROM results r WHERE r.sha256 = c.sha256), "
                "(SELECT COUNT(*) FROM verdicts v WHERE v.sha256 = c.sha256), "
                "(SELECT MAX(created) FROM verdicts v WHERE v.sha256 = c.sha256) "
                "FROM cases c ORDER BY c.created DESC, c.rowid DESC").fetchall()
        keys = ("sha256", "label", "source", "width", "height", "created", "results", "verdicts", "last_verdict")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def case(self, sha256: str) -> dict[str, Any] | None:
        with self._connection() as db:
            row = db.execute("SELECT sha256, label, source, width, height, thumbnail, created FROM cases "
                             "WHERE sha256 = ?", (sha256,)).fetchone()
        keys = ("sha256", "label", "source", "width", "height", "thumbnail", "created")
        return dict(zip(keys, row, strict=True)) if row else None

    def results(self, sha256: str) -> list[dict[str, Any]]:
        with self._connection() as db:
            rows = db.execute("SELECT model, kind, target, method, payload, overlay, created FROM results "
                              "WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        return [{"model": m, "kind": k, "target": t, "method": me, "payload": json.loads(p), "overlay": o,
                 "created": c} for m, k, t, me, p, o, c in rows]

    def verdicts(self, sha256: str) -> list[Verdict]:
        """All verdicts on a case, oldest first."""
        with self._connection() as db:
            rows = db.execute("SELECT sha256, model, target, method, verdict, comment, reviewer, created "
                              "FROM verdicts WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        return [Verdict(*row) for row in rows]

    def latest_verdicts(self, sha256: str) -> dict[tuple[str, str, str], Verdict]:
        """The latest verdict per (model, target, method)."""
        return {(v.model, v.target, v.method): v for v in self.verdicts(sha256)}
