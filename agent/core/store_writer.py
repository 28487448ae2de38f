"""The store's one writer thread: every SQLite write of the agent goes through it.

Writes are queued jobs. The thread takes everything queued (at most `max_batch` jobs) and
commits it in ONE transaction, so a storm of events costs one commit per batch, not one per
event, and no caller (the event loop least of all) ever waits for the database lock.

Two kinds of job:
- a queued insert (an event): fire and forget, bounded by `queue_limit`; under overload a new
  one is dropped and counted (`dropped`) rather than blocking its caller. Its `on_commit` gets
  the row id once the transaction is committed, in queue order: what is published (SSE, sinks,
  the API) is already durable and its ids are exact and increasing.
- a call `fn(connection)` (a ledger cycle, a migration, retention), whose caller may wait on the
  returned Future. It runs inside a SAVEPOINT: a failing call rolls back alone, and its caller
  gets the exception; its own writes stay atomic (the ledger's counters and usage rows together).
  Calls are not bounded by the queue limit: each has a caller waiting for it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

log = logging.getLogger("agent.store")

T = TypeVar("T")

#: Inserts queued before new ones are dropped (about 0.5 KB each: a few MB at most).
DEFAULT_QUEUE_LIMIT = 10_000
#: Jobs committed together at most: keeps one transaction (and its WAL growth) short.
DEFAULT_MAX_BATCH = 1_000


class StoreClosed(RuntimeError):
    """The store was closed: nothing more can be written."""


@dataclass(slots=True)
class _Insert:
    sql: str
    params: Sequence[Any]
    on_commit: Callable[[int], None] | None


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


#: Page cache per connection (KiB; SQLite's default is 2,000). The agent's writes append and
#: its reads scan by index: a smaller cache costs little, and with a writer and up to four
#: readers the default would let SQLite hold ~10 MB.
CACHE_KIB = 256


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
    # only an OS crash can lose the last commits.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    # Statement journals (a multi-row UPDATE inside a SAVEPOINT) in memory, not temp files: a
    # transaction does not fail when the agent is short of fds (thousands kept for cgroups).
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return db


class StoreWriter:
    def __init__(self, path: Path, queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.queue_limit = queue_limit
        self.max_batch = max_batch
        self._db = connect(path)
        self._cond = threading.Condition()
        self._jobs: deque[_Insert | _Call] = deque()
        self._inserts_queued = 0
        self._closing = False
        #: Inserts dropped because the queue was full (or the store closed).
        self.dropped = 0
        #: Inserts lost because their transaction failed (disk full, I/O error).
        self.failed = 0
        #: Transactions committed, and the jobs they held.
        self.transactions = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def insert(self, sql: str, params: Sequence[Any],
               on_commit: Callable[[int], None] | None = None) -> bool:
        """Queue one INSERT; False (and counted in `dropped`) when the queue is full."""
        with self._cond:
            if self._closing or self._inserts_queued >= self.queue_limit:
                self.dropped += 1
                return False
            self._jobs.append(_Insert(sql, params, on_commit))
            self._inserts_queued += 1
            self._cond.notify()
        return True

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run fn(connection) in the writer's next transaction; its result or exception."""
        future: Future[T] = Future()
        with self._cond:
            if self._closing:
                raise StoreClosed("the store is closed")
            self._jobs.append(_Call(fn, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Commit everything queued, then stop the thread and close the connection."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    break
                n = min(len(self._jobs), self.max_batch)
                batch = [self._jobs.popleft() for _ in range(n)]
                self._inserts_queued -= sum(isinstance(j, _Insert) for j in batch)
            self._commit(batch)
        self._db.close()

    def _commit(self, batch: list[_Insert | _Call]) -> None:
        results: list[Any] = []
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in batch:
                results.append(self._one(db, job))
            db.execute("COMMIT")
        except Exception as e:  # the transaction is lost: so is every job in it
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("store: rollback failed")
            log.error("store: a transaction of %d writes failed: %s", len(batch), e)
            results = [e] * len(batch)
        else:
            self.transactions += 1
            self.written += len(batch)
        for job, result in zip(batch, results, strict=True):
            self._deliver(job, result)

    def _one(self, db: sqlite3.Connection, job: _Insert | _Call) -> Any:
        if isinstance(job, _Insert):
            # One statement is atomic by itself: a failing INSERT leaves the others.
            try:
                return int(db.execute(job.sql, job.params).lastrowid or 0)
            except Exception as e:  # sqlite3.Error, or a value SQLite cannot bind
                if not db.in_transaction:
                    raise  # the error rolled the whole transaction back
                return e
        db.execute("SAVEPOINT job")
        try:
            result = job.fn(db)
        except Exception as e:
            if not db.in_transaction:
                raise
            db.execute("ROLLBACK TO job")
            db.execute("RELEASE job")
            return e
        db.execute("RELEASE job")
        return result

    def _deliver(self, job: _Insert | _Call, result: Any) -> None:
        if isinstance(job, _Call):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
            return
        if isinstance(result, BaseException):
            self.failed += 1
            log.error("store: an insert was lost: %s", result)
            return
        if job.on_commit is not None:
            try:
                job.on_commit(result)
            except Exception:
                log.exception("store: a commit callback failed")


def store_families(writer: StoreWriter) -> list[Metric]:
    dropped = CounterMetricFamily(
        "container_agent_store_dropped_total",
        "Writes (events) dropped because the store writer's queue was full")
    dropped.add_metric([], writer.dropped)
    failed = CounterMetricFamily(
        "container_agent_store_write_failures_total",
        "Writes (events) lost because their transaction failed (disk full, I/O error)")
    failed.add_metric([], writer.failed)
    transactions = CounterMetricFamily(
        "container_agent_store_transactions_total", "Transactions the store writer committed")
    transactions.add_metric([], writer.transactions)
    written = CounterMetricFamily(
        "container_agent_store_writes_total",
        "Writes committed (an event, a ledger cycle...); / transactions = the batching")
    written.add_metric([], writer.written)
    queued = GaugeMetricFamily("container_agent_store_queued_writes",
                               "Writes waiting for the store writer", value=writer.queued)
    return [dropped, failed, transactions, written, queued]
