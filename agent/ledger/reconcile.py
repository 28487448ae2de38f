"""A closed period's `unattributed` rows: for each parent, its own CPU minus its children's.

A child is the nearest tracked descendant of the same boot; a parent gets a row when it had
children in the period or the kernel said it has descendants (it is not a leaf). A parent is a
path: where it had two incarnations in one period, both incarnations' CPU balances against all
its children, on the later one's row (by last_wall, then inode).

Under churn a period holds 100,000s of incarnations, so nothing is kept per path: SQLite returns
the CPU rows (revisions included) with each subtree contiguous after its root ('/' sorted as
char(1), below any other byte of a path) and a path's rows together, its latest incarnation's
last; one walk down that order keeps only the chain of ancestors of the current path. No GROUP
BY: its temporary b-tree took 4 MiB more for a churned hour, and the walk sums a path's rows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agent.ledger.meters import CPU_USEC, SELF, UNATTRIBUTED

_IN_TREE_ORDER = (
    "SELECT u.boot_id, i.cgroup, u.inode, json_extract(i.state_json, '$.inner'),"
    " u.quantity FROM ledger_usage u"
    " JOIN ledger_incarnation i ON i.boot_id = u.boot_id AND i.inode = u.inode"
    " WHERE u.subject = ? AND u.meter = ? AND u.period_start = ?"
    " ORDER BY u.boot_id, replace(i.cgroup, '/', char(1)),"
    " COALESCE(json_extract(i.state_json, '$.last_wall'), 0), u.inode"
)


@dataclass
class _Path:
    boot: str
    path: str
    total: int  # CPU of all its incarnations in the period
    inode: int  # its latest incarnation's
    inner: bool  # the latest incarnation has descendants in the kernel
    children: int = 0  # CPU of its nearest tracked descendants
    had_children: bool = False

    def holds(self, boot: str, path: str) -> bool:
        return boot == self.boot and (self.path == "/" or path.startswith(self.path + "/"))


def reconcile(db: sqlite3.Connection, period_start: int, period_end: int) -> None:
    """Write (correction) rows so each parent's `unattributed` equals own - children's CPU."""
    wants: list[tuple[str, int, int]] = []  # (boot, inode, unattributed CPU)
    chain: list[_Path] = []

    def leave() -> None:
        done = chain.pop()
        if chain:
            chain[-1].children += done.total
            chain[-1].had_children = True
        if done.had_children or done.inner:
            wants.append((done.boot, done.inode, done.total - done.children))

    for boot, path, inode, inner, total in db.execute(
            _IN_TREE_ORDER, (SELF, CPU_USEC, period_start)):
        top = chain[-1] if chain else None
        if top is not None and top.boot == boot and top.path == path:
            top.total += int(total)
            top.inode, top.inner = int(inode), bool(inner)
            continue
        while chain and not chain[-1].holds(boot, path):
            leave()
        chain.append(_Path(str(boot), str(path), int(total), int(inode), bool(inner)))
    while chain:
        leave()
    for boot, inode, want in wants:
        _write_unattributed(db, boot, inode, want, period_start, period_end)


def _write_unattributed(db: sqlite3.Connection, boot: str, inode: int, want: int,
                        period_start: int, period_end: int) -> None:
    have_sum, have_rev = db.execute(
        "SELECT SUM(quantity), MAX(revision) FROM ledger_usage WHERE boot_id = ? AND"
        " inode = ? AND subject = ? AND meter = ? AND period_start = ?",
        (boot, inode, UNATTRIBUTED, CPU_USEC, period_start)).fetchone()
    if have_rev is not None and want == have_sum:
        return
    rev = 0 if have_rev is None else int(have_rev) + 1
    db.execute(
        "INSERT INTO ledger_usage (boot_id, inode, subject, meter, period_start, period_end,"
        " revision, quantity, n_samples, n_resets, closed, identity_json) SELECT ?, ?, ?, ?,"
        " ?, ?, ?, ?, 0, 0, 1, identity_json FROM ledger_incarnation"
        " WHERE boot_id = ? AND inode = ?",
        (boot, inode, UNATTRIBUTED, CPU_USEC, period_start, period_end, rev,
         want - int(have_sum or 0), boot, inode),
    )
