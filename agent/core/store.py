"""The embedded store: one SQLite database in WAL mode under the state directory.

Writes go through one writer thread (agent/core/store_writer.py), which owns the only write
connection and commits queued work in batches; reads use connections of their own from a small
pool, from worker threads: in WAL mode a reader sees the last commit and never waits for the
writer's transaction. Neither blocks the event loop: the loop only queues (`insert`,
`write_soon`) and reads with `asyncio.to_thread`.

Each component owns its tables and creates them through `migrate(component, version, ddl)`;
the store records the applied version per component so start-up is idempotent.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from agent.core.store_writer import CACHE_KIB, DEFAULT_QUEUE_LIMIT, StoreWriter

T = TypeVar("T")

#: Idle read connections kept for reuse (more are opened while needed, then closed).
IDLE_READERS = 4


class Store:
    def __init__(self, path: Path, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writer = StoreWriter(path, queue_limit)
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.write(lambda db: db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (component TEXT PRIMARY KEY, version INTEGER)"))

    @property
    def journal_mode(self) -> str:
        return str(self.query("PRAGMA journal_mode")[0][0])

    def migrate(self, component: str, version: int, ddl: Iterable[str]) -> None:
        """Apply `ddl` once for (component, version)."""
        statements = list(ddl)

        def apply(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
            if row is not None and int(row[0]) >= version:
                return
            for statement in statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, version),
            )

        self.write(apply)

    # -- writes (through the writer thread) ----------------------------------------------
    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(connection) in one transaction of the writer; waits for the commit (not on the
        event loop: use write_soon there)."""
        return self.writer.call(fn).result()

    def write_soon(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        return self.writer.call(fn)

    def insert(self, sql: str, params: Sequence[Any],
               on_commit: Callable[[int], None] | None = None) -> bool:
        """Queue one INSERT (never blocks); on_commit(row id) runs in the writer thread after
        the commit. False when the bounded queue is full: the row is dropped and counted."""
        return self.writer.insert(sql, params, on_commit)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction and wait; returns lastrowid."""
        return self.write(lambda db: int(db.execute(sql, params).lastrowid or 0))

    def flush(self) -> None:
        """Wait until everything queued so far is committed (and its callbacks ran)."""
        self.write(lambda db: None)

    # -- reads (any thread but the event loop) --------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of this thread's own for the block (autocommit: each
        statement sees the last commit)."""
        with self._readers_lock:
            db = self._readers.pop() if self._readers else None
        if db is None:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                 timeout=30.0)
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA temp_store=MEMORY")  # sorts without temp files (fds)
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        try:
            yield db
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._readers) < IDLE_READERS
                if keep:
                    self._readers.append(db)
            if not keep:
                db.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.reading() as db:
            return list(db.execute(sql, params).fetchall())

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        self.writer.close()
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
