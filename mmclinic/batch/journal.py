"""The scoring journal: a SQLite file beside the output that makes a cohort run resumable and exactly-once.

Every result and every failure is keyed by ``(case_id, input_fingerprint, weights_sha256)``. A run commits
one transaction per batch, so a run killed at any instant leaves whole batches behind: the next run skips
their cases and recomputes only the batches that never committed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmclinic.errors import InputError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    case_id TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    prediction TEXT NOT NULL,
    PRIMARY KEY (case_id, input_fingerprint, weights_sha256)
);
CREATE TABLE IF NOT EXISTS failures (
    case_id TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    row INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    final INTEGER NOT NULL,
    PRIMARY KEY (case_id, input_fingerprint, weights_sha256)
);
"""


@dataclass(frozen=True)
class Key:
    """Identity of one scoring: the case, exactly these inputs, exactly these weights."""

    case_id: str
    input_fingerprint: str
    weights_sha256: str


@dataclass(frozen=True)
class Failure:
    """A case that could not be scored; ``final`` failures (bad input) are not retried by a resumed run."""

    key: Key
    row: int
    reason: str
    detail: str
    final: bool = True


def journal_path(out: Path) -> Path:
    """Where the journal of an output file lives (beside it, so a resumed run finds it)."""
    return out.with_name(f".{out.name}.journal.sqlite")


class Journal:
    """One open journal file. Not shared between threads: only the run's main loop writes to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in ``commit_batch``.
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives power loss, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            found = self.get_meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise InputError("batch.journal_unreadable", f"{path.name}: {exc}") from exc
        if found is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif found != str(SCHEMA_VERSION):
            raise InputError("batch.journal_version", f"{path.name} has schema {found}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection (the file stays for a later resume or inspection)."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A stored run setting, or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a run setting (autocommitted)."""
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reads ------------------------------------------------------------------------------------
    def done_keys(self) -> set[Key]:
        """Keys that a resumed run must not score again: results, and final failures."""
        keys = {Key(*r) for r in self._db.execute("SELECT case_id, input_fingerprint, weights_sha256 FROM results")}
        keys |= {
            Key(*r)
            for r in self._db.execute("SELECT case_id, input_fingerprint, weights_sha256 FROM failures WHERE final = 1")
        }
        return keys

    def result(self, key: Key) -> dict[str, Any] | None:
        """The stored prediction dict for ``key``."""
        row = self._db.execute(
            "SELECT prediction FROM results WHERE case_id = ? AND input_fingerprint = ? AND weights_sha256 = ?",
            (key.case_id, key.input_fingerprint, key.weights_sha256),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def failure(self, key: Key) -> Failure | None:
        """The stored failure for ``key``."""
        row = self._db.execute(
            "SELECT row, reason, detail, final FROM failures "
            "WHERE case_id = ? AND input_fingerprint = ? AND weights_sha256 = ?",
            (key.case_id, key.input_fingerprint, key.weights_sha256),
        ).fetchone()
        return None if row is None else Failure(key, int(row[0]), str(row[1]), str(row[2]), bool(row[3]))

    def count_results(self) -> int:
        """Number of stored results (all runs)."""
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def iter_results(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        """Every stored result."""
        for cid, fp, w, pred in self._db.execute(
            "SELECT case_id, input_fingerprint, weights_sha256, prediction FROM results ORDER BY rowid"
        ):
            yield Key(cid, fp, w), json.loads(pred)

    # -- writes -----------------------------------------------------------------------------------
    def commit_batch(self, results: Iterable[tuple[Key, dict[str, Any]]], failures: Iterable[Failure]) -> int:
        """Store one batch's results and failures in one transaction; returns how many results were new.

        A key already present is left untouched (INSERT OR IGNORE): the first committed result of a
        scoring is the one every later run reports, so nothing is ever scored into the output twice.
        A retryable failure that now has a result is removed.
        """
        new = 0
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for key, pred in results:
                cur.execute(
                    "INSERT OR IGNORE INTO results (case_id, input_fingerprint, weights_sha256, prediction) "
                    "VALUES (?, ?, ?, ?)",
                    (key.case_id, key.input_fingerprint, key.weights_sha256, json.dumps(pred, sort_keys=True)),
                )
                new += cur.rowcount
                cur.execute(
                    "DELETE FROM failures WHERE case_id = ? AND input_fingerprint = ? AND weights_sha256 = ?",
                    (key.case_id, key.input_fingerprint, key.weights_sha256),
                )
            for f in failures:
                k = f.key
                cur.execute(
                    "INSERT OR REPLACE INTO failures "
                    "(case_id, input_fingerprint, weights_sha256, row, reason, detail, final) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (k.case_id, k.input_fingerprint, k.weights_sha256, f.row, f.reason, f.detail[:2000], int(f.final)),
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        return new
