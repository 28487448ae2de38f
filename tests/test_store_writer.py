"""The store's one writer thread on a real SQLite file: batching, ids in commit order, bounded
queue with counted drops, a failing job rolled back alone, drain at close, and reads that do not
wait for the writer's open transaction."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from agent.core.store import Store
from agent.core.store_writer import StoreClosed, store_families
from tests.support.tracked import track

DDL = ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER NOT NULL UNIQUE)",)


def _store(tmp_path: Path, queue_limit: int = 10_000) -> Store:
    store = track(Store(tmp_path / "agent.db", queue_limit))
    store.migrate("t", 1, DDL)
    return store


class Hold:
    """A job that keeps the writer inside its transaction until released."""

    def __init__(self, store: Store) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = store.write_soon(self._run)
        assert self.entered.wait(30), "the writer never ran the holding job"

    def _run(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (v) VALUES (-1)")
        self.entered.set()
        self.release.wait(60)


def test_queued_inserts_commit_in_batches_with_ids_in_order(tmp_path: Path) -> None:
    store = _store(tmp_path)
    committed: list[tuple[int, int]] = []
    hold = Hold(store)
    before = store.writer.transactions
    for v in range(2500):
        assert store.insert("INSERT INTO t (v) VALUES (?)", (v,),
                            lambda rid, v=v: committed.append((v, rid)))
    hold.release.set()
    store.flush()
    # Everything queued behind the held transaction: 2,500 inserts in 3 transactions
    # (1,000 per batch at most), plus the held one and the flush.
    assert store.writer.transactions - before <= 5
    assert [v for v, _ in committed] == list(range(2500))  # told in queue order...
    ids = [rid for _, rid in committed]
    assert ids == list(range(ids[0], ids[0] + 2500))  # ...with consecutive row ids
    rows = store.query("SELECT v, id FROM t WHERE v >= 0 ORDER BY id")
    assert [(int(v), int(i)) for v, i in rows] == committed
    store.close()


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    store = _store(tmp_path, queue_limit=10)
    hold = Hold(store)
    accepted = [store.insert("INSERT INTO t (v) VALUES (?)", (v,)) for v in range(25)]
    assert accepted == [True] * 10 + [False] * 15
    families = {f.name: f for f in store_families(store.writer)}
    assert families["container_agent_store_dropped"].samples[0].value == 15
    assert families["container_agent_store_queued_writes"].samples[0].value == 10
    hold.release.set()
    store.flush()
    assert store.query("SELECT COUNT(*) FROM t WHERE v >= 0") == [(10,)]
    # Room again once the queue drained.
    assert store.insert("INSERT INTO t (v) VALUES (100)", ())
    store.close()


def test_a_failing_job_rolls_back_alone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    hold = Hold(store)  # so the three below share one transaction
    store.insert("INSERT INTO t (v) VALUES (1)", ())

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (v) VALUES (2)")
        db.execute("INSERT INTO t (v) VALUES (1)")  # UNIQUE violation

    failing = store.write_soon(half_then_fail)
    store.insert("INSERT INTO t (v) VALUES (1)", ())  # a failing insert: lost, counted
    store.insert("INSERT INTO t (v) VALUES (3)", ())
    hold.release.set()
    with pytest.raises(sqlite3.IntegrityError):
        failing.result(30)
    store.flush()
    assert [int(r[0]) for r in store.query("SELECT v FROM t ORDER BY v")] == [-1, 1, 3]
    assert store.writer.failed == 1
    store.close()


def test_close_commits_everything_queued(tmp_path: Path) -> None:
    store = _store(tmp_path)
    hold = Hold(store)
    for v in range(500):
        store.insert("INSERT INTO t (v) VALUES (?)", (v,))
    hold.release.set()
    store.close()
    with pytest.raises(StoreClosed):
        store.write_soon(lambda db: None)
    assert not store.insert("INSERT INTO t (v) VALUES (1000)", ())
    again = Store(tmp_path / "agent.db")
    assert again.query("SELECT COUNT(*) FROM t WHERE v >= 0") == [(500,)]
    again.close()


def test_a_read_does_not_wait_for_the_writers_transaction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.execute("INSERT INTO t (v) VALUES (7)")
    hold = Hold(store)  # a write transaction is open and uncommitted
    got: list[list[tuple[object, ...]]] = []
    reader = threading.Thread(target=lambda: got.append(store.query("SELECT v FROM t")))
    reader.start()
    reader.join(30)  # a deadlock guard, not a timing: the writer waits for our release
    assert not reader.is_alive() and not hold.done.done()
    assert got == [[(7,)]]  # the last commit, not the open transaction's row
    hold.release.set()
    hold.done.result(30)
    assert sorted(store.query("SELECT v FROM t")) == [(-1,), (7,)]
    assert store.journal_mode == "wal"
    store.close()
