"""The results table of a sweep: one SQLite row per finished point, committed as it finishes.

``<output>/sweep.db`` survives a killed run (each row is one transaction), so ``--resume``
skips every point it holds; the CSV, Parquet and plots are written from it. A point is
identified by its *point hash*: the config hash of its resolved accelerator config plus
everything its figures depend on (workload, evaluator, estimate method), so the same design
under the same workload is never evaluated twice in one sweep.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbmforge import __version__

__all__ = ["PointRow", "SweepStore", "StoreError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    point_hash TEXT UNIQUE NOT NULL,
    idx INTEGER NOT NULL,
    trial INTEGER,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    params TEXT NOT NULL,
    config_hash TEXT,
    design_hash TEXT,
    metrics TEXT NOT NULL,
    steps TEXT NOT NULL,
    detail TEXT NOT NULL,
    config TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished REAL NOT NULL
);
"""


class StoreError(ValueError):
    """The output directory holds a store that does not fit this run (the message says why)."""


@dataclass
class PointRow:
    point_hash: str
    index: int
    status: str                         # ok | infeasible | failed
    params: dict[str, Any]
    config: dict
    reason: str = ""
    trial: int | None = None
    config_hash: str | None = None
    design_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: float = 0.0


class SweepStore:
    """``sweep.db`` in a sweep's output directory."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "sweep.db"
        self._db: sqlite3.Connection | None = None

    @staticmethod
    def existing(out_dir: Path) -> tuple[int, str | None] | None:
        """(rows, spec identity) of the store under ``out_dir``, None when there is none; reads only."""
        path = Path(out_dir) / "sweep.db"
        if not path.is_file():
            return None
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
                rows = db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
                ident = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        except sqlite3.Error as err:
            raise StoreError(f"{path} is not a readable sweep store ({err}); use another output directory") from None
        return rows, ident[0] if ident else None

    @staticmethod
    def check(out_dir: Path, identity: str, *, resume: bool) -> None:
        """Refuse, before anything starts, an output directory that holds another sweep, or this one
        without ``resume``."""
        found = SweepStore.existing(out_dir)
        if found is None:
            return
        rows, ident = found
        if ident is not None and ident != identity:
            raise StoreError(f"{Path(out_dir) / 'sweep.db'} holds a sweep whose spec differs from this one (base "
                             "config, parameters, workload, objectives, constraints, estimate or search method); "
                             "use another output directory")
        if rows and not resume:
            raise StoreError(f"{out_dir} already holds a sweep ({rows} points); pass --resume (resume=True) to "
                             "continue it, or choose another output directory")

    def open(self, identity: str, spec_json: dict, *, resume: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.executescript(_SCHEMA)
        old = self.meta("identity")
        if old is None:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("identity", identity), ("spec", json.dumps(spec_json)),
                    ("created", str(time.time())), ("hbmforge", __version__)])
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("resumed" if resume else "started",
                                                                           str(time.time())))

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def add(self, row: PointRow) -> None:
        """Record a finished point (one transaction: a killed run keeps every row it committed)."""
        row.finished = row.finished or time.time()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO points (point_hash, idx, trial, status, reason, params, config_hash, "
                "design_hash, metrics, steps, detail, config, seconds, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.point_hash, row.index, row.trial, row.status, row.reason, json.dumps(row.params),
                 row.config_hash, row.design_hash, json.dumps(row.metrics), json.dumps(row.steps),
                 json.dumps(row.detail), json.dumps(row.config), row.seconds, row.finished))

    def rows(self) -> list[PointRow]:
        cur = self._db.execute(
            "SELECT point_hash, idx, trial, status, reason, params, config_hash, design_hash, metrics, steps, "
            "detail, config, seconds, finished FROM points ORDER BY seq")
        return [PointRow(point_hash=r[0], index=r[1], trial=r[2], status=r[3], reason=r[4],
                         params=json.loads(r[5]), config_hash=r[6], design_hash=r[7], metrics=json.loads(r[8]),
                         steps=json.loads(r[9]), detail=json.loads(r[10]), config=json.loads(r[11]),
                         seconds=r[12], finished=r[13]) for r in cur.fetchall()]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
