"""The event log: one SQLite table in the agent's store, with retention by age and count.

Writes go through the store's writer thread (queued, committed in batches); reads (`query`,
`last_id`, `count`) block on SQLite: call them from a worker thread, never the event loop.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

from agent.core.store import Store
from agent.events.model import Event, EventContainer

_DDL_V1 = (
    # AUTOINCREMENT: ids are never reused after retention deleted the newest-but-one rows.
    "CREATE TABLE events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ts_ns INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " severity TEXT NOT NULL,"
    " container_id TEXT, container_name TEXT, runtime TEXT, cgroup TEXT, inode INTEGER,"
    " kind TEXT,"
    " fields TEXT NOT NULL)",
    "CREATE INDEX events_type ON events (type, id)",
    "CREATE INDEX events_container ON events (container_id, id)",
    "CREATE INDEX events_ts ON events (ts_ns)",
)

_INSERT_COLUMNS = (
    "ts_ns, type, severity, container_id, container_name, runtime, cgroup, inode, kind, fields"
)
_COLUMNS = "id, " + _INSERT_COLUMNS
_INSERT_SQL = f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"

log = logging.getLogger("agent.events")

#: The most rows one query returns.
MAX_LIMIT = 10_000


def _row_event(row: tuple[Any, ...]) -> Event:
    eid, ts_ns, etype, severity, cid, cname, runtime, cgroup, inode, kind, fields = row
    container = None
    if cid is not None:
        container = EventContainer(cid, cname or "", runtime or "", cgroup or "", inode or 0,
                                   kind or "")
    return Event(int(eid), int(ts_ns), etype, severity, container,
                 MappingProxyType(json.loads(fields)))


def _row(ts_ns: int, etype: str, severity: str, c: EventContainer | None,
         doc: str) -> tuple[Any, ...]:
    return (ts_ns, etype, severity, c.id if c else None, c.name if c else None,
            c.runtime if c else None, c.cgroup if c else None, c.inode if c else None,
            c.kind if c else None, doc)


def _log_pruned(done: Future[int]) -> None:
    if done.exception() is not None:
        log.error("event retention failed: %s", done.exception())
    elif done.result():
        log.info("event retention removed %d events", done.result())


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("events", 1, _DDL_V1)

    def enqueue(
        self,
        etype: str,
        container: EventContainer | None,
        severity: str,
        fields: Mapping[str, Any],
        ts_ns: int,
        on_commit: Callable[[Event], None],
    ) -> bool:
        """Queue the event for the store's writer (never blocks): on_commit(event, with its row
        id) runs in the writer thread once it is committed, in id order. False: dropped (the
        writer's queue is full; counted in the store's metrics)."""
        doc = json.dumps(dict(fields), default=str, sort_keys=False)

        def committed(eid: int) -> None:
            on_commit(Event(eid, ts_ns, etype, severity, container,
                            MappingProxyType(json.loads(doc))))

        return self.store.insert(_INSERT_SQL, _row(ts_ns, etype, severity, container, doc),
                                 committed)

    def append(self, etype: str, container: EventContainer | None, severity: str,
               fields: Mapping[str, Any], ts_ns: int) -> Event:
        """Store one event and wait for its commit (tools and tests; the agent enqueues)."""
        doc = json.dumps(dict(fields), default=str, sort_keys=False)
        row = _row(ts_ns, etype, severity, container, doc)
        eid = self.store.write(lambda db: int(db.execute(_INSERT_SQL, row).lastrowid or 0))
        return Event(eid, ts_ns, etype, severity, container, MappingProxyType(json.loads(doc)))

    def last_id(self) -> int:
        rows = self.store.query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0][0]) if rows else 0

    def query(
        self,
        since: int | None = None,
        types: Sequence[str] = (),
        container: str | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Events in id order. With `since`: the first `limit` after it; else the latest `limit`.

        `container` matches a container id, id prefix (>= 12 chars), name or cgroup path.
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("id > ?")
            params.append(since)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        if container:
            clause = "(container_id = ? OR container_name = ? OR cgroup = ?"
            params.extend([container, container, container])
            if len(container) >= 12:
                clause += " OR container_id LIKE ? ESCAPE '\\'"
                escaped = container.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                params.append(escaped + "%")
            where.append(clause + ")")
        sql = f"SELECT {_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        limit = max(1, min(limit, MAX_LIMIT))
        if since is not None:
            rows = self.store.query(sql + " ORDER BY id ASC LIMIT ?", (*params, limit))
        else:
            rows = self.store.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
            rows.reverse()
        return [_row_event(r) for r in rows]

    def prune(self, max_age_s: float, max_count: int, now_ns: int) -> int:
        """Delete events older than `max_age_s` and all but the newest `max_count`; waits."""
        return self.prune_soon(max_age_s, max_count, now_ns).result()

    def prune_soon(self, max_age_s: float, max_count: int, now_ns: int) -> Future[int]:
        """The same, queued to the store's writer (the event loop does not wait)."""

        def prune(db: sqlite3.Connection) -> int:
            deleted = 0
            if max_age_s > 0:
                cutoff = now_ns - int(max_age_s * 1e9)
                deleted += db.execute("DELETE FROM events WHERE ts_ns < ?", (cutoff,)).rowcount
            if max_count > 0:
                row = db.execute(
                    "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", (max_count,)
                ).fetchone()
                if row is not None:
                    deleted += db.execute("DELETE FROM events WHERE id <= ?", (row[0],)).rowcount
            return deleted

        done = self.store.write_soon(prune)
        done.add_done_callback(_log_pruned)
        return done

    def count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM events")[0][0])
