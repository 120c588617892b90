"""Measurement cache: SQLite (WAL mode), one row per (model sha256, target settings digest,
profiler version).  Safe with several processes writing at once and after a process is killed
mid-write: every put is one SQLite transaction.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from hwcompress.errors import CacheError
from hwcompress.paths import cache_dir
from hwcompress.records import Measurement, RecordError

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1
BUSY_TIMEOUT_S = 30.0
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    model_sha256 TEXT NOT NULL,
    settings_digest TEXT NOT NULL,
    profiler_version TEXT NOT NULL,
    target TEXT NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (model_sha256, settings_digest, profiler_version)
);
"""


def default_cache_path() -> Path:
    """``cache_dir()/measurements.sqlite`` (``$HWCOMPRESS_CACHE`` moves it)."""
    return cache_dir() / "measurements.sqlite"


class CacheKey(NamedTuple):
    """What makes two measurements interchangeable."""

    model_sha256: str
    settings_digest: str
    profiler_version: str


@dataclass(frozen=True)
class CacheStats:
    """Size of the cache file and this instance's hit/miss counts."""

    path: str
    entries: int
    file_bytes: int
    hits: int
    misses: int


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class MeasurementCache:
    """SQLite cache of :class:`Measurement` records; one connection per process, opened lazily."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # ----------------------------------------------------------------- connection
    def _error(self, exc: BaseException) -> CacheError:
        return CacheError(
            f"measurement cache {self.path} is unreadable or corrupt ({exc}); delete the file or pass --cache PATH"
        )

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection inherited through fork() must not be used (nor closed) in the child.
        self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {self.path.parent} ({exc.strerror}); pass --cache PATH") from None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        # Switching a new file to WAL needs an exclusive lock and SQLite answers "database is locked" at
        # once, without waiting on busy_timeout, when another process is doing the same (seen in CI: two
        # processes opening a new cache together): retry the set-up until the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                row = self._set_up(conn)
                break
            except sqlite3.OperationalError as exc:
                if _locked(exc) and time.monotonic() < deadline:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    time.sleep(0.05)
                    continue
                conn.close()
                raise (self._locked_error() if _locked(exc) else self._error(exc)) from None
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise self._error(exc) from None
        if row is not None and row[0] != str(CACHE_SCHEMA):
            conn.close()
            raise CacheError(
                f"measurement cache {self.path} has schema {row[0]}, this hwcompress uses {CACHE_SCHEMA}; "
                "delete the file or pass --cache PATH"
            )
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> tuple[Any, ...] | None:
        """WAL mode and the schema on a new connection; the stored schema row (None: new file)."""
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("measurement cache %s: journal mode %s (WAL not available here)", self.path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in filter(None, (s.strip() for s in _SCHEMA_SQL.split(";"))):
            conn.execute(stmt)
        row: tuple[Any, ...] | None = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(CACHE_SCHEMA),))
        conn.execute("COMMIT")
        return row

    def _locked_error(self) -> CacheError:
        return CacheError(
            f"measurement cache {self.path} stayed locked for {BUSY_TIMEOUT_S:g} s by another process; "
            "retry, or pass --cache PATH"
        )

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connect()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise (self._locked_error() if _locked(exc) else self._error(exc)) from None
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> MeasurementCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- API
    def get(self, key: CacheKey) -> Measurement | None:
        """The stored measurement for ``key`` with ``cached=True``, or None."""
        rows = self._execute(
            "SELECT payload FROM measurements WHERE model_sha256 = ? AND settings_digest = ? AND profiler_version = ?",
            tuple(key),
        )
        if not rows:
            self.misses += 1
            return None
        try:
            m = Measurement.from_dict(json.loads(rows[0][0]))
        except (ValueError, RecordError) as exc:
            log.warning("measurement cache %s: dropping an unreadable entry (%s)", self.path, exc)
            self._execute(
                "DELETE FROM measurements WHERE model_sha256 = ? AND settings_digest = ? AND profiler_version = ?",
                tuple(key),
            )
            self.misses += 1
            return None
        self.hits += 1
        return replace(m, cached=True)

    def put(self, key: CacheKey, measurement: Measurement) -> None:
        """Store (or replace) ``measurement`` under ``key``, in one transaction."""
        payload = json.dumps(replace(measurement, cached=False).to_dict(), sort_keys=True)
        self._execute(
            "INSERT OR REPLACE INTO measurements "
            "(model_sha256, settings_digest, profiler_version, target, created, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (*key, measurement.target, time.time(), payload),
        )

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        n = self._execute("SELECT COUNT(*) FROM measurements")[0][0]
        self._execute("DELETE FROM measurements")
        return int(n)

    def stats(self) -> CacheStats:
        entries = self._execute("SELECT COUNT(*) FROM measurements")[0][0]
        size = sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )
        return CacheStats(str(self.path), int(entries), size, self.hits, self.misses)
