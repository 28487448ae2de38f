"""The ledger's tables in the agent's SQLite store, and the one transaction per cycle.

Tables (component "ledger"):
- ledger_meta: key/value (accounting start, closed boundary);
- ledger_incarnation: one row per (boot id, cgroup inode): identity and the last counters;
- ledger_netns: last network counters per (boot id, network namespace);
- ledger_usage: one row per (incarnation, subject, meter, period, revision).

`commit()` writes the counters and the usage they produced in the same transaction, so a
crash (kill -9) leaves either both or neither: after a restart the next sample's delta starts
exactly where the stored counters stop, and nothing is counted twice. The transaction is the
store's writer thread's (agent/core/store_writer.py; the batch in a SAVEPOINT of it, events
maybe committed alongside); reads use the store's read connections, from worker threads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.ledger.meters import CPU_USEC, METERS, Aggregation
from agent.ledger.reconcile import reconcile

if TYPE_CHECKING:  # the export child reads through its own connection, without the store
    from agent.core.store import Store

COMPONENT = "ledger"

DDL_V1 = (
    "CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE ledger_incarnation (
        boot_id TEXT NOT NULL, inode INTEGER NOT NULL, host_id TEXT NOT NULL,
        cgroup TEXT NOT NULL, identity_json TEXT NOT NULL, state_json TEXT NOT NULL,
        PRIMARY KEY (boot_id, inode))""",
    """CREATE TABLE ledger_netns (
        boot_id TEXT NOT NULL, netns TEXT NOT NULL, state_json TEXT NOT NULL,
        PRIMARY KEY (boot_id, netns))""",
    """CREATE TABLE ledger_usage (
        boot_id TEXT NOT NULL, inode INTEGER NOT NULL, subject TEXT NOT NULL,
        meter TEXT NOT NULL, period_start INTEGER NOT NULL, period_end INTEGER NOT NULL,
        revision INTEGER NOT NULL, quantity INTEGER NOT NULL, n_samples INTEGER NOT NULL,
        n_resets INTEGER NOT NULL, closed INTEGER NOT NULL, identity_json TEXT,
        PRIMARY KEY (boot_id, inode, subject, meter, period_start, revision))""",
    "CREATE INDEX ledger_usage_period ON ledger_usage (period_start, closed)",
)

#: (boot_id, inode, subject, meter, period_start)
RowKey = tuple[str, int, str, str, int]


@dataclass(slots=True)
class RowAcc:
    """A usage row being accumulated (open) or a late increment (correction)."""

    period_end: int
    quantity: int = 0
    n_samples: int = 0
    n_resets: int = 0

    def add(self, meter: str, quantity: int, samples: int, resets: int) -> None:
        if METERS[meter].aggregation is Aggregation.MAX:
            self.quantity = max(self.quantity, quantity)
        else:
            self.quantity += quantity
        self.n_samples += samples
        self.n_resets += resets


@dataclass(slots=True)
class Batch:
    """Everything one observation changes, written in one transaction."""

    incarnations: dict[tuple[str, int], tuple[str, str, str, str]] = field(default_factory=dict)
    netns: dict[tuple[str, str], str] = field(default_factory=dict)
    open_rows: dict[RowKey, RowAcc] = field(default_factory=dict)
    late: dict[RowKey, RowAcc] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    #: Close every open row whose period ends at or before this instant (epoch s).
    close_before: int | None = None


@dataclass(frozen=True, slots=True)
class StoredRow:
    host_id: str
    boot_id: str
    inode: int
    cgroup: str
    identity: Mapping[str, Any]
    subject: str
    meter: str
    period_start: int
    period_end: int
    revision: int
    quantity: int
    n_samples: int
    n_resets: int
    closed: bool


class LedgerStorage:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate(COMPONENT, 1, DDL_V1)

    # -- reads --------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.store.query("SELECT key, value FROM ledger_meta")}

    def incarnation_state(self, boot_id: str, inode: int) -> tuple[str, str] | None:
        """(identity_json, state_json) of a stored incarnation."""
        rows = self.store.query(
            "SELECT identity_json, state_json FROM ledger_incarnation"
            " WHERE boot_id = ? AND inode = ?", (boot_id, inode))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def netns_state(self, boot_id: str, netns: str) -> str | None:
        rows = self.store.query(
            "SELECT state_json FROM ledger_netns WHERE boot_id = ? AND netns = ?",
            (boot_id, netns))
        return str(rows[0][0]) if rows else None

    def open_rows(self) -> dict[RowKey, RowAcc]:
        out: dict[RowKey, RowAcc] = {}
        for b, i, s, m, ps, pe, q, n, r in self.store.query(
            "SELECT boot_id, inode, subject, meter, period_start, period_end, quantity,"
            " n_samples, n_resets FROM ledger_usage WHERE closed = 0"
        ):
            out[(str(b), int(i), str(s), str(m), int(ps))] = RowAcc(int(pe), int(q), int(n), int(r))
        return out

    def open_row(self, key: RowKey, period_end: int) -> RowAcc:
        """One open row as stored (zero when there is none yet)."""
        got = self.store.query(
            "SELECT quantity, n_samples, n_resets FROM ledger_usage WHERE boot_id = ?"
            " AND inode = ? AND subject = ? AND meter = ? AND period_start = ?"
            " AND revision = 0 AND closed = 0", key)
        if not got:
            return RowAcc(period_end)
        q, n, r = got[0]
        return RowAcc(period_end, int(q), int(n), int(r))

    def rows(self, start: int, end: int, include_open: bool = False) -> list[StoredRow]:
        """Rows whose period starts in [start, end), closed ones only unless include_open."""
        with self.store.reading() as db:
            return stored_rows(db, start, end, include_open)

    # -- the cycle's transaction ----------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        """Write the batch in one transaction of the store's writer and wait for the commit:
        the next observation reads what this one stored (call it from a worker thread)."""
        self.store.write(lambda db: _write_batch(db, batch))


def stored_rows(db: sqlite3.Connection, start: int, end: int,
                include_open: bool = False) -> list[StoredRow]:
    """Rows whose period starts in [start, end), closed ones only unless include_open (any
    read connection: the agent's, or an export process's own)."""
    sql = (
        "SELECT i.host_id, u.boot_id, u.inode, i.cgroup,"
        " COALESCE(u.identity_json, i.identity_json), u.subject, u.meter, u.period_start,"
        " u.period_end, u.revision, u.quantity, u.n_samples, u.n_resets, u.closed"
        " FROM ledger_usage u JOIN ledger_incarnation i"
        " ON i.boot_id = u.boot_id AND i.inode = u.inode"
        " WHERE u.period_start >= ? AND u.period_start < ?"
    )
    if not include_open:
        sql += " AND u.closed = 1"
    out = []
    # An incarnation's rows share its identity text: parsed once, one mapping for all.
    identities: dict[str, Mapping[str, Any]] = {}
    for r in db.execute(sql, (start, end)):
        identity = identities.get(r[4])
        if identity is None:
            identity = identities[r[4]] = json.loads(r[4])
        out.append(StoredRow(
            host_id=str(r[0]), boot_id=str(r[1]), inode=int(r[2]), cgroup=str(r[3]),
            identity=identity, subject=str(r[5]), meter=str(r[6]),
            period_start=int(r[7]), period_end=int(r[8]), revision=int(r[9]),
            quantity=int(r[10]), n_samples=int(r[11]), n_resets=int(r[12]),
            closed=bool(r[13]),
        ))
    return out


def _write_batch(db: sqlite3.Connection, batch: Batch) -> None:
    """The counters and the usage they produced, together (inside the writer's transaction)."""
    db.executemany(
        "INSERT INTO ledger_incarnation (boot_id, inode, host_id, cgroup, identity_json,"
        " state_json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(boot_id, inode) DO UPDATE SET"
        " host_id = excluded.host_id, cgroup = excluded.cgroup,"
        " identity_json = excluded.identity_json, state_json = excluded.state_json",
        [(b, i, *v) for (b, i), v in batch.incarnations.items()],
    )
    db.executemany(
        "INSERT INTO ledger_netns (boot_id, netns, state_json) VALUES (?, ?, ?)"
        " ON CONFLICT(boot_id, netns) DO UPDATE SET state_json = excluded.state_json",
        [(b, n, s) for (b, n), s in batch.netns.items()],
    )
    db.executemany(
        "INSERT INTO ledger_usage (boot_id, inode, subject, meter, period_start,"
        " period_end, revision, quantity, n_samples, n_resets, closed)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0)"
        " ON CONFLICT(boot_id, inode, subject, meter, period_start, revision)"
        " DO UPDATE SET quantity = excluded.quantity, n_samples = excluded.n_samples,"
        " n_resets = excluded.n_resets WHERE closed = 0",
        [(*k, a.period_end, a.quantity, a.n_samples, a.n_resets)
         for k, a in batch.open_rows.items()],
    )
    touched: set[tuple[int, int]] = set()
    for key, acc in sorted(batch.late.items()):
        if _write_correction(db, key, acc):
            touched.add((key[4], acc.period_end))
    db.executemany(
        "INSERT INTO ledger_meta (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        sorted(batch.meta.items()),
    )
    if batch.close_before is not None:
        touched |= _close(db, batch.close_before)
    for period in sorted(touched):
        reconcile(db, *period)


def _write_correction(db: sqlite3.Connection, key: RowKey, acc: RowAcc) -> bool:
    """Late data for a closed period: a new row with revision = highest + 1 (at least 1)."""
    b, i, s, m, ps = key
    prev = db.execute(
        "SELECT MAX(revision), MAX(quantity) FROM ledger_usage WHERE boot_id = ? AND inode = ?"
        " AND subject = ? AND meter = ? AND period_start = ?", (b, i, s, m, ps)).fetchone()
    rev = 1 if prev[0] is None else int(prev[0]) + 1
    quantity = acc.quantity
    if METERS[m].aggregation is Aggregation.MAX and prev[1] is not None and quantity <= prev[1]:
        return False  # a peak no higher than the one already billed changes nothing
    if METERS[m].aggregation is Aggregation.SUM and quantity == 0 and acc.n_resets == 0:
        return False
    db.execute(
        "INSERT INTO ledger_usage (boot_id, inode, subject, meter, period_start, period_end,"
        " revision, quantity, n_samples, n_resets, closed, identity_json) SELECT ?, ?, ?, ?, ?,"
        " ?, ?, ?, ?, ?, 1, identity_json FROM ledger_incarnation WHERE boot_id = ? AND inode = ?",
        (b, i, s, m, ps, acc.period_end, rev, quantity, acc.n_samples, acc.n_resets, b, i),
    )
    return m == CPU_USEC


#: Rows closed per UPDATE: SQLite collects the rows of an UPDATE that changes the index it
#: scans before writing them, in memory; one statement for a churned hour (100,000s of rows)
#: took tens of MB.
CLOSE_CHUNK = 2000


def _close(db: sqlite3.Connection, before: int) -> set[tuple[int, int]]:
    periods = {
        (int(a), int(b)) for a, b in db.execute(
            "SELECT DISTINCT period_start, period_end FROM ledger_usage"
            " WHERE closed = 0 AND period_end <= ?", (before,))
    }
    # The identity is frozen into the row as it was when the row closed.
    while db.execute(
        "UPDATE ledger_usage SET closed = 1, identity_json = (SELECT i.identity_json FROM"
        " ledger_incarnation i WHERE i.boot_id = ledger_usage.boot_id AND i.inode ="
        " ledger_usage.inode) WHERE rowid IN (SELECT rowid FROM ledger_usage"
        " WHERE closed = 0 AND period_end <= ? LIMIT ?)", (before, CLOSE_CHUNK)).rowcount:
        pass
    return periods


def dump_json(value: Mapping[str, Any] | Iterable[Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
