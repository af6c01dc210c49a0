"""The case store: cases (by content hash, no identifiers), saved results and reviewer verdicts, in SQLite (WAL).

Every write is its own committed transaction, so a verdict survives a reload, a restart or a crash right after it:
results are written with `synchronous=NORMAL` (safe against a killed process), verdicts with `synchronous=FULL`
(the WAL is flushed to the disk before the verdict is reported saved, so they also survive a power cut).
Opening a store checks it (`PRAGMA quick_check`), refuses one it cannot write and brings an older schema up to date
(`PRAGMA user_version`, one migration per version). Every failure is a `StoreError` whose message says what is wrong
and what to do. `backup()` / `backup_store()` copy a live store with SQLite's online backup API.

The file is `$XAI_DATA_DIR/cases.sqlite` (default `data/cases.sqlite` next to the project) or `$XAI_STORE_PATH`.
Cases are named `case-<first 12 hex of the sha256>` (`case_name`), plus a label the reviewer chose; the name of the
uploaded file is never stored.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from xai_core.errors import InputError, StoreError

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = ("agree", "disagree", "unsure")
SCHEMA_VERSION = 2
MAX_LABEL = 60
MAX_COMMENT = 5000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# Version 1: the layout the dashboard used before schema versioning (those stores have user_version 0).
_V1 = (
    """CREATE TABLE IF NOT EXISTS cases (
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    source TEXT,
    width INTEGER,
    height INTEGER,
    thumbnail BLOB,
    created TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS results (
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
)""",
    """CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL REFERENCES cases(sha256),
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
    comment TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS verdicts_by_case ON verdicts (sha256, created)",
)
_V1_COLUMNS = {
    "cases": {"sha256", "label", "source", "width", "height", "thumbnail", "created"},
    "results": {"id", "sha256", "model", "kind", "target", "method", "payload", "overlay", "created"},
    "verdicts": {"id", "sha256", "model", "target", "method", "verdict", "comment", "reviewer", "created"},
}


def _migrate_to_1(db: sqlite3.Connection) -> None:
    """The original layout (a no-op on a store written before versioning, after `_check_legacy`)."""
    for statement in _V1:
        db.execute(statement)


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Verdicts say how the reviewer was identified (role, login); uploads lose the file name they were stored
    under (file names carry patient names): they become `case-<hash>`."""
    db.execute("ALTER TABLE verdicts ADD COLUMN role TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE verdicts ADD COLUMN auth TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE cases SET label = 'case-' || substr(sha256, 1, 12) "
               "WHERE coalesce(source, '') IN ('', 'upload')")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def default_path() -> Path:
    """$XAI_STORE_PATH, else $XAI_DATA_DIR/cases.sqlite, else data/cases.sqlite in the project."""
    if os.environ.get("XAI_STORE_PATH"):
        return Path(os.environ["XAI_STORE_PATH"])
    return Path(os.environ.get("XAI_DATA_DIR", ROOT / "data")) / "cases.sqlite"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def clean_label(label: str | None, *, forbidden: Iterable[str] = ()) -> str:
    """A reviewer's case label made safe to share: one line, at most MAX_LABEL characters; '' when it contains one
    of `forbidden` (the uploaded file's name or stem: file names carry patient names)."""
    text = " ".join(_CONTROL.sub(" ", label or "").split())[:MAX_LABEL]
    lowered = text.lower()
    if any(f and f.lower() in lowered for f in (s.strip() for s in forbidden) if len(f) >= 3):
        return ""
    return text


def identifying_parts(file_name: str | None) -> list[str]:
    """The parts of an uploaded file's name a shared label must not repeat: the name, its stem, and each word or
    number of 4+ characters in it (file names such as DOE^JOHN_123456.dcm carry the patient's name and ID)."""
    name = PurePath(file_name or "").name
    stem = PurePath(name).stem
    words = [w for w in re.split(r"[^0-9A-Za-z]+", stem) if len(w) >= 4]
    return [p for p in dict.fromkeys([name, stem, *words]) if p]


def case_name(sha256: str, label: str | None = None, *, forbidden: Iterable[str] = ()) -> str:
    """The name a case is stored, reported and shown to others under: `case-<12 hex>`, then ` · label` if any."""
    _check_sha(sha256)
    text = clean_label(label, forbidden=forbidden)
    return f"case-{sha256[:12]}" + (f" · {text}" if text else "")


def _check_sha(sha256: str) -> None:
    if not _SHA256.fullmatch(sha256 or ""):
        raise InputError("A case is keyed by the sha256 of its content (64 lowercase hex digits); got "
                         f"{len(sha256 or '')} characters.")


def store_error(path: Path, action: str, exc: BaseException) -> StoreError:
    """A `StoreError` that says what went wrong with the store file `path` while `action`, and what to do."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    detail = str(exc)
    if isinstance(exc, OSError):
        name = "SQLITE_READONLY" if isinstance(exc, PermissionError) else "SQLITE_IOERR"
        detail = exc.strerror or str(exc)
    if name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_PERM") or name.startswith("SQLITE_AUTH"):
        return StoreError(
            f"The case store {path} is read-only ({detail}), so {action} failed. Make the file and its folder "
            "writable by the user running the dashboard (SQLite also writes the -wal and -shm files beside it), or "
            "point XAI_STORE_PATH at a writable file.")
    if name == "SQLITE_FULL":
        return StoreError(
            f"The disk holding the case store {path} is full ({detail}), so {action} failed; what was saved "
            "before is intact. Free some space on that disk (or move the store with XAI_STORE_PATH), then try "
            "again.")
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":
        return StoreError(
            f"The case store {path} is damaged ({detail}), so {action} failed. Stop the dashboard, move the file "
            "aside (with its -wal and -shm files) and restore the latest backup (`python -m xai_core store-backup` "
            "makes them), or start an empty store (XAI_STORE_PATH names a new file); "
            f"`sqlite3 {path} .recover` may salvage rows.")
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        return StoreError(
            f"The case store {path} is locked by another process ({detail}), so {action} failed. Try again; if it "
            "persists, stop the other program that has the store open.")
    if name.startswith("SQLITE_CANTOPEN"):
        return StoreError(
            f"The case store {path} cannot be opened ({detail}). Check that its folder exists and is writable by "
            "the user running the dashboard, or point XAI_STORE_PATH at another file.")
    if name.startswith("SQLITE_IOERR"):
        return StoreError(
            f"The disk failed while {action} in the case store {path} ({detail}). Check the disk (full, removed, "
            "network share gone) and try again.")
    return StoreError(f"The case store {path} failed while {action} ({detail}). Check the file, or point "
                      "XAI_STORE_PATH at another one.")


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
    role: str = ""
    auth: str = ""


class CaseStore:
    """Thread-safe access to one SQLite file (one connection per thread, WAL journal).

    Raises `StoreError` when the file cannot be opened, written, is damaged or has a schema this version does not
    know; older schemas are migrated in place.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._local = threading.local()  # a thread's connection closes when the thread ends
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(self.path, "creating its folder", exc) from exc
        with self._guard("opening it"):
            self.schema_version = self._open()

    # ------------------------------------------------------------------ connections and checks

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """sqlite3 errors as `StoreError`s; `IntegrityError` (a caller's mistake, e.g. an unknown case) stays."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise store_error(self.path, action, exc) from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA secure_delete=ON")  # replaced labels and deleted rows are zeroed, not left in free space
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        yield db

    def _open(self) -> int:
        with self._connection() as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                lines = "; ".join(line for p in problems for line in str(p).splitlines()
                                  if not line.startswith("***"))
                raise StoreError(
                    f"The case store {self.path} is damaged: the integrity check found {lines[:300]}. Nothing was "
                    "written to it. Stop the dashboard, move the file aside (with its -wal and -shm files) and "
                    "restore the latest backup (`python -m xai_core store-backup` makes them), or start an empty "
                    f"store (XAI_STORE_PATH names a new file); `sqlite3 {self.path} .recover` may salvage rows.")
            version = self._migrate(db)
            if str(mode).lower() != "wal":
                raise StoreError(f"The case store {self.path} cannot use SQLite's WAL journal (got '{mode}'); "
                                 "keep it on a local disk, not a network share.")
        return version

    def _tables(self, db: sqlite3.Connection) -> dict[str, set[str]]:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%'")]
        return {n: {row[1] for row in db.execute(f"PRAGMA table_info('{n}')")} for n in names}

    def _check_legacy(self, db: sqlite3.Connection) -> None:
        """A store without a version must be empty or have the original layout (version 1)."""
        tables = self._tables(db)
        if not tables:
            return
        if set(tables) != set(_V1_COLUMNS) or any(tables[t] != c for t, c in _V1_COLUMNS.items()):
            raise StoreError(
                f"The file {self.path} is an SQLite database but not a case store this dashboard knows (tables: "
                f"{', '.join(sorted(tables))}); nothing was changed. Point XAI_STORE_PATH at another file, or move "
                "this one aside.")

    def _migrate(self, db: sqlite3.Connection) -> int:
        """Bring the schema to SCHEMA_VERSION in one transaction; rewriting user_version also proves the file is
        writable (a read-only store fails here, at open, not at the first verdict)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The case store {self.path} has schema version {version}, written by a newer version of the "
                    f"dashboard (this one knows up to {SCHEMA_VERSION}); nothing was changed. Upgrade the "
                    "dashboard, or point XAI_STORE_PATH at another file.")
            if version == 0:
                self._check_legacy(db)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if version < SCHEMA_VERSION:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the replaced labels leave the WAL file too
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close this thread's connection (the store reopens one on next use)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def status(self) -> dict[str, Any]:
        """Schema version, integrity ('ok' or the problems), sizes and counts, for the administration page."""
        with self._guard("checking it"), self._connection() as db:
            check = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
            counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _V1_COLUMNS}
            version = db.execute("PRAGMA user_version").fetchone()[0]
            size = self.path.stat().st_size
        return {"path": str(self.path), "schema_version": version, "integrity": "; ".join(check)[:500],
                "bytes": size, **counts}

    # ------------------------------------------------------------------ writes

    def add_case(self, sha256: str, label: str, *, source: str = "", shape: tuple[int, int] | None = None,
                 thumbnail: bytes | None = None) -> None:
        """Record a case (idempotent: the first label and thumbnail are kept). `label` is shared with every
        reviewer: pass `case_name(...)`, never a file name."""
        _check_sha(sha256)
        height, width = shape if shape else (None, None)
        with self._guard("saving the case"), self._connection() as db:
            db.execute("INSERT OR IGNORE INTO cases VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sha256, label, source, width, height, thumbnail, _now()))

    def save_result(self, sha256: str, model: str, kind: str, payload: dict[str, Any], *, target: str = "",
                    method: str = "", overlay: bytes | None = None) -> None:
        """Store (or replace) a result: kind 'prediction', 'explanation', 'certainty', ..."""
        with self._guard("saving a result"), self._connection() as db:
            db.execute("INSERT INTO results (sha256, model, kind, target, method, payload, overlay, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256, model, kind, target, method) DO UPDATE "
                       "SET payload = excluded.payload, overlay = excluded.overlay, created = excluded.created",
                       (sha256, model, kind, target, method, json.dumps(payload), overlay, _now()))

    def add_verdict(self, sha256: str, model: str, target: str, method: str, verdict: str, comment: str = "",
                    reviewer: str = "", *, role: str = "", auth: str = "") -> Verdict:
        """Append a verdict (history is kept; the latest per explanation counts), flushed to the disk
        (`synchronous=FULL`) before it returns. `reviewer`, `role` and `auth` come from the login."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}; got '{verdict}'")
        if len(comment) > MAX_COMMENT:
            raise InputError(f"The comment is {len(comment)} characters long; the limit is {MAX_COMMENT}.")
        record = Verdict(sha256, model, target, method, verdict, comment.strip(), reviewer.strip(), _now(),
                         role, auth)
        with self._guard("saving the verdict"), self._connection() as db:
            db.execute("PRAGMA synchronous=FULL")
            try:
                db.execute("INSERT INTO verdicts (sha256, model, target, method, verdict, comment, reviewer, created, "
                           "role, auth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (record.sha256, record.model, record.target, record.method, record.verdict,
                            record.comment, record.reviewer, record.created, record.role, record.auth))
            finally:
                db.execute("PRAGMA synchronous=NORMAL")
        return record

    # ------------------------------------------------------------------ reads

    def cases(self) -> list[dict[str, Any]]:
        """The worklist: every case with its number of results and verdicts, newest first."""
        with self._guard("reading the worklist"), self._connection() as db:
            rows = db.execute(
                "SELECT c.sha256, c.label, c.source, c.width, c.height, c.created, "
                "(SELECT COUNT(*) FROM results r WHERE r.sha256 = c.sha256), "
                "(SELECT COUNT(*) FROM verdicts v WHERE v.sha256 = c.sha256), "
                "(SELECT MAX(created) FROM verdicts v WHERE v.sha256 = c.sha256) "
                "FROM cases c ORDER BY c.created DESC, c.rowid DESC").fetchall()
        keys = ("sha256", "label", "source", "width", "height", "created", "results", "verdicts", "last_verdict")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def case(self, sha256: str) -> dict[str, Any] | None:
        with self._guard("reading a case"), self._connection() as db:
            row = db.execute("SELECT sha256, label, source, width, height, thumbnail, created FROM cases "
                             "WHERE sha256 = ?", (sha256,)).fetchone()
        keys = ("sha256", "label", "source", "width", "height", "thumbnail", "created")
        return dict(zip(keys, row, strict=True)) if row else None

    def results(self, sha256: str) -> list[dict[str, Any]]:
        with self._guard("reading results"), self._connection() as db:
            rows = db.execute("SELECT model, kind, target, method, payload, overlay, created FROM results "
                              "WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        return [{"model": m, "kind": k, "target": t, "method": me, "payload": json.loads(p), "overlay": o,
                 "created": c} for m, k, t, me, p, o, c in rows]

    def verdicts(self, sha256: str) -> list[Verdict]:
        """All verdicts on a case, oldest first."""
        with self._guard("reading verdicts"), self._connection() as db:
            rows = db.execute("SELECT sha256, model, target, method, verdict, comment, reviewer, created, role, auth "
                              "FROM verdicts WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
        return [Verdict(*row) for row in rows]

    def latest_verdicts(self, sha256: str) -> dict[tuple[str, str, str], Verdict]:
        """The latest verdict per (model, target, method)."""
        return {(v.model, v.target, v.method): v for v in self.verdicts(sha256)}

    # ------------------------------------------------------------------ backups

    def backup(self, destination: str | Path, *, overwrite: bool = False) -> Path:
        """A consistent copy of the live store at `destination` (SQLite's online backup API; a single file in
        rollback-journal mode, integrity-checked), written beside it and renamed into place. Returns the path."""
        destination = Path(destination)
        if destination.exists() and destination.resolve() == self.path.resolve():
            raise InputError("The backup destination is the store itself; choose another file.")
        if destination.exists() and not overwrite:
            raise InputError(f"{destination} already exists; choose another file or pass overwrite=True "
                             "(--overwrite).")
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial.unlink(missing_ok=True)
            target = sqlite3.connect(partial, isolation_level=None)
            try:
                with self._connection() as db:
                    db.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
                check = [r[0] for r in target.execute("PRAGMA quick_check").fetchall()]
            finally:
                target.close()
            if check != ["ok"]:
                raise StoreError(f"The backup of {self.path} failed its integrity check ({'; '.join(check)[:200]}); "
                                 "the store itself may be damaged. Keep the previous backup.")
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, destination)
        except (sqlite3.Error, OSError) as exc:
            _remove_quietly(partial)
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"The backup could not be written to {destination} ({detail}); the store itself is "
                             "unchanged. Choose a folder that is writable and has room for a copy of the store "
                             f"({self.path.stat().st_size} bytes).") from exc
        except BaseException:
            _remove_quietly(partial)
            raise
        return destination

    def backup_bytes(self) -> bytes:
        """The same consistent copy as `backup`, as the bytes of an SQLite file (for a download; in memory)."""
        with self._guard("backing it up"):
            target = sqlite3.connect(":memory:")
            try:
                with self._connection() as db:
                    db.backup(target)
                data = bytearray(target.serialize())
            finally:
                target.close()
        data[18:20] = b"\x01\x01"  # header: rollback-journal file format (what journal_mode=DELETE writes), not WAL
        return bytes(data)


def _remove_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def backup_store(destination: str | Path, *, source: str | Path | None = None, overwrite: bool = False) -> Path:
    """Back up the case store `source` (default: `default_path()`) to `destination`; for `python -m xai_core
    store-backup`. Raises `StoreError` (store unusable, destination unwritable) or `InputError` (destination
    exists without `overwrite`)."""
    source_path = Path(source) if source is not None else default_path()
    if not source_path.is_file():
        raise StoreError(f"There is no case store at {source_path}; pass --store or set XAI_STORE_PATH.")
    store = CaseStore(source_path)
    try:
        return store.backup(destination, overwrite=overwrite)
    finally:
        store.close()
