"""The embedded store: one SQLite database in WAL mode under the state directory.

Each component owns its tables and creates them through `migrate(component, version, ddl)`;
the store records the applied version per component so start-up is idempotent. Access from the
event loop and the collection thread is serialised by one lock (SQLite writes are short here).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
        # only an OS crash can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (component TEXT PRIMARY KEY, version INTEGER)"
        )

    @property
    def journal_mode(self) -> str:
        with self._lock:
            row = self._db.execute("PRAGMA journal_mode").fetchone()
        return str(row[0])

    def migrate(self, component: str, version: int, ddl: Iterable[str]) -> None:
        """Apply `ddl` once for (component, version)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
            if row is not None and int(row[0]) >= version:
                return
            for statement in ddl:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, version),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; returns lastrowid."""
        with self._lock:
            cur = self._db.execute(sql, params)
            return int(cur.lastrowid or 0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
