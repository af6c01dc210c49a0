"""One SQLite file per annotation run: neurons, their concepts and representatives, statistics, head weights."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xai_core.errors import UnknownNameError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (neuron INTEGER PRIMARY KEY, name TEXT NOT NULL, mean REAL, std REAL, min REAL,
    max REAL, threshold REAL, uncertain INTEGER NOT NULL, histogram TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS concepts (neuron INTEGER NOT NULL, rank INTEGER NOT NULL, concept TEXT NOT NULL,
    score REAL NOT NULL, PRIMARY KEY (neuron, rank));
CREATE TABLE IF NOT EXISTS representatives (neuron INTEGER NOT NULL, rank INTEGER NOT NULL, image_id TEXT NOT NULL,
    activation REAL NOT NULL, PRIMARY KEY (neuron, rank));
CREATE TABLE IF NOT EXISTS weights (neuron INTEGER NOT NULL, label TEXT NOT NULL, weight REAL NOT NULL,
    PRIMARY KEY (neuron, label));
CREATE TABLE IF NOT EXISTS thumbnails (image_id TEXT PRIMARY KEY, png BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS concepts_by_term ON concepts (concept);
"""


@dataclass
class NeuronRecord:
    """Everything stored about one neuron."""

    neuron: int
    name: str
    concepts: list[str]
    scores: list[float]
    uncertain: bool
    representatives: list[str]
    activations: list[float]  # of the representatives, descending
    stats: dict[str, float]  # mean, std, min, max, threshold over the probing set
    histogram: dict[str, list[float]]  # counts and edges of the probing-set activations
    weights: dict[str, float] = field(default_factory=dict)  # label -> weight of this neuron in the label's logit


def write_annotation(path: str | Path, meta: dict[str, Any], neurons: list[NeuronRecord],
                     thumbnails: dict[str, bytes] | None = None) -> Path:
    """Write a complete annotation file (atomically: a finished file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        for n in neurons:
            db.execute("INSERT INTO neurons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (n.neuron, n.name, n.stats.get("mean"), n.stats.get("std"), n.stats.get("min"),
                        n.stats.get("max"), n.stats.get("threshold"), int(n.uncertain), json.dumps(n.histogram)))
            db.executemany("INSERT INTO concepts VALUES (?, ?, ?, ?)",
                           [(n.neuron, r, c, s) for r, (c, s) in enumerate(zip(n.concepts, n.scores, strict=True))])
            db.executemany("INSERT INTO representatives VALUES (?, ?, ?, ?)",
                           [(n.neuron, r, i, a) for r, (i, a) in
                            enumerate(zip(n.representatives, n.activations, strict=True))])
            db.executemany("INSERT INTO weights VALUES (?, ?, ?)", [(n.neuron, k, w) for k, w in n.weights.items()])
        db.executemany("INSERT INTO thumbnails VALUES (?, ?)", list((thumbnails or {}).items()))
    db.close()
    tmp.replace(path)
    return path


class AnnotationStore:
    """Read access to one annotation file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no neuron annotation at {self.path}")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        self._db.close()

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def neuron_ids(self) -> list[int]:
        return [row[0] for row in self._db.execute("SELECT neuron FROM neurons ORDER BY neuron")]

    def neuron(self, neuron: int) -> NeuronRecord:
        row = self._db.execute("SELECT name, mean, std, min, max, threshold, uncertain, histogram FROM neurons "
                               "WHERE neuron = ?", (neuron,)).fetchone()
        if row is None:
            raise UnknownNameError(f"neuron {neuron} is not in {self.path.name}")
        concepts = self._db.execute("SELECT concept, score FROM concepts WHERE neuron = ? ORDER BY rank",
                                    (neuron,)).fetchall()
        reps = self._db.execute("SELECT image_id, activation FROM representatives WHERE neuron = ? ORDER BY rank",
                                (neuron,)).fetchall()
        weights = dict(self._db.execute("SELECT label, weight FROM weights WHERE neuron = ?", (neuron,)).fetchall())
        return NeuronRecord(
            neuron=neuron, name=row[0], concepts=[c for c, _ in concepts], scores=[s for _, s in concepts],
            uncertain=bool(row[6]), representatives=[i for i, _ in reps], activations=[a for _, a in reps],
            stats=dict(zip(("mean", "std", "min", "max", "threshold"), row[1:6], strict=True)),
            histogram=json.loads(row[7]), weights=weights)

    def neurons(self) -> list[NeuronRecord]:
        return [self.neuron(i) for i in self.neuron_ids()]

    def search(self, term: str) -> list[int]:
        """Neurons with a concept containing `term` (case-insensitive), best score first."""
        rows = self._db.execute("SELECT neuron, MAX(score) FROM concepts WHERE concept LIKE ? GROUP BY neuron "
                                "ORDER BY MAX(score) DESC", (f"%{term.strip().lower()}%",))
        return [row[0] for row in rows]

    def thumbnail(self, image_id: str) -> bytes | None:
        row = self._db.execute("SELECT png FROM thumbnails WHERE image_id = ?", (image_id,)).fetchone()
        return row[0] if row else None
