"""The study's answers: an embedded SQLite database in the study folder.

Every write is its own transaction, committed before the HTTP response is sent, with
``synchronous=FULL`` in WAL mode: an answer the reader saw accepted survives a closed tab, a
killed server or a power cut. One connection per request (SQLite connections are not shared
between threads); ``busy_timeout`` lets two readers write at the same moment.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SCHEMA_VERSION", "AnswerDB"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    session TEXT NOT NULL UNIQUE,
    created_utc TEXT NOT NULL
);
-- the per-reader randomisation: position in the reading order and side of the original
CREATE TABLE IF NOT EXISTS assignments (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    position INTEGER NOT NULL,
    trial TEXT NOT NULL,
    original_side TEXT NOT NULL CHECK (original_side IN ('left', 'right')),
    PRIMARY KEY (reader_id, position),
    UNIQUE (reader_id, trial)
);
CREATE TABLE IF NOT EXISTS answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    trial TEXT NOT NULL,
    fidelity INTEGER NOT NULL CHECK (fidelity BETWEEN 1 AND 5),
    diagnostic INTEGER NOT NULL CHECK (diagnostic BETWEEN 1 AND 5),
    artifacts INTEGER NOT NULL CHECK (artifacts BETWEEN 1 AND 5),
    comment TEXT NOT NULL DEFAULT '',
    seconds REAL,
    answered_utc TEXT NOT NULL,
    PRIMARY KEY (reader_id, trial)
);
-- trials a reader could not rate (missing / corrupt image); the study goes on without them
CREATE TABLE IF NOT EXISTS problems (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    trial TEXT NOT NULL,
    reason TEXT NOT NULL,
    reported_utc TEXT NOT NULL,
    PRIMARY KEY (reader_id, trial)
);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class AnswerDB:
    """Thin, explicit access to ``answers.sqlite``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with closing(self.connect()) as con:
                con.executescript(_SCHEMA)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            from .study import StudyError

            raise StudyError(f"{self.path}: cannot open the answers database ({exc}); the study folder must be "
                             f"writable, and a damaged file must be restored from a backup (never deleted: it "
                             f"holds the readers' answers)") from exc

    def connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit BEGIN
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    # -- readers -----------------------------------------------------------------------------
    def sign_in(self, name: str, trials: list[str], seed: int) -> dict[str, Any]:
        """The reader named ``name`` (created on first sign-in, with its randomised order)."""
        with closing(self.connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT * FROM readers WHERE name = ?", (name,)).fetchone()
                if row is None:
                    cur = con.execute("INSERT INTO readers (name, session, created_utc) VALUES (?, ?, ?)",
                                      (name, secrets.token_urlsafe(24), _now()))
                    rid = cur.lastrowid
                    # Per-reader order and sides, drawn from the study seed and the reader's name:
                    # reproducible from the study, different between readers.
                    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
                    rng = np.random.default_rng([int(seed), h])
                    order = rng.permutation(len(trials))
                    sides = rng.integers(0, 2, len(trials))
                    con.executemany(
                        "INSERT INTO assignments VALUES (?, ?, ?, ?)",
                        [(rid, pos, trials[int(j)], ("left", "right")[int(s)])
                         for pos, (j, s) in enumerate(zip(order, sides))])
                    row = con.execute("SELECT * FROM readers WHERE id = ?", (rid,)).fetchone()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return dict(row)

    def reader_by_session(self, session: str) -> dict[str, Any] | None:
        with closing(self.connect()) as con:
            row = con.execute("SELECT * FROM readers WHERE session = ?", (session,)).fetchone()
        return dict(row) if row else None

    def progress(self, reader_id: int) -> dict[str, Any]:
        """Counts and the next trial to show (the first assigned one neither answered nor
        reported as a problem), with the side of the original."""
        with closing(self.connect()) as con:
            total = con.execute("SELECT COUNT(*) FROM assignments WHERE reader_id = ?", (reader_id,)).fetchone()[0]
            answered = con.execute("SELECT COUNT(*) FROM answers WHERE reader_id = ?", (reader_id,)).fetchone()[0]
            skipped = con.execute("SELECT COUNT(*) FROM problems WHERE reader_id = ?", (reader_id,)).fetchone()[0]
            nxt = con.execute(
                "SELECT position, trial, original_side FROM assignments a WHERE reader_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM answers x WHERE x.reader_id = a.reader_id AND x.trial = a.trial) "
                "AND NOT EXISTS (SELECT 1 FROM problems p WHERE p.reader_id = a.reader_id AND p.trial = a.trial) "
                "ORDER BY position LIMIT 1", (reader_id,)).fetchone()
        return {"total": total, "answered": answered, "skipped": skipped,
                "next": dict(nxt) if nxt else None}

    def assignment(self, reader_id: int, trial: str) -> dict[str, Any] | None:
        with closing(self.connect()) as con:
            row = con.execute("SELECT * FROM assignments WHERE reader_id = ? AND trial = ?",
                              (reader_id, trial)).fetchone()
        return dict(row) if row else None

    # -- answers -----------------------------------------------------------------------------
    def answer(self, reader_id: int, trial: str, ratings: dict[str, int], comment: str,
               seconds: float | None) -> None:
        """Record (or, for a trial answered before, replace) one answer; committed on return."""
        with closing(self.connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute(
                    "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (reader_id, trial, ratings["fidelity"], ratings["diagnostic"], ratings["artifacts"],
                     comment, seconds, _now()))
                con.execute("DELETE FROM problems WHERE reader_id = ? AND trial = ?", (reader_id, trial))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def problem(self, reader_id: int, trial: str, reason: str) -> None:
        with closing(self.connect()) as con:
            con.execute("INSERT OR REPLACE INTO problems VALUES (?, ?, ?, ?)", (reader_id, trial, reason, _now()))

    def rows(self) -> list[dict[str, Any]]:
        """Every answer joined with its reader and assignment, in (reader, position) order."""
        with closing(self.connect()) as con:
            rows = con.execute(
                "SELECT r.name AS reader, a.trial, s.position, s.original_side, a.fidelity, a.diagnostic, "
                "a.artifacts, a.comment, a.seconds, a.answered_utc FROM answers a "
                "JOIN readers r ON r.id = a.reader_id "
                "JOIN assignments s ON s.reader_id = a.reader_id AND s.trial = a.trial "
                "ORDER BY r.name, s.position").fetchall()
        return [dict(r) for r in rows]

    def problem_rows(self) -> list[dict[str, Any]]:
        with closing(self.connect()) as con:
            rows = con.execute("SELECT r.name AS reader, p.trial, p.reason, p.reported_utc FROM problems p "
                               "JOIN readers r ON r.id = p.reader_id ORDER BY r.name, p.trial").fetchall()
        return [dict(r) for r in rows]
