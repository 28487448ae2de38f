"""Benchmark: closing a billing period after heavy churn (N ended incarnations under one
parent, as a churned hour leaves), in one transaction as the ledger's writer does it.

Prints, for the close (rows marked closed, identities frozen into them) and the reconciliation
(`unattributed` = the parent's CPU minus its children's): wall time, SQLite's memory high-water
mark (sqlite3_memory_highwater, from the libsqlite3 the sqlite3 module uses) and the peak of
Python allocations (tracemalloc); then the process's RSS before, after, and after
gc.collect() + malloc_trim(0) as the agent does after each cycle. Nothing is asserted.

Run: `.venv/bin/python tests/bench/bench_period_close.py [--lives 20000]`.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent.ledger.storage as storage
from agent.core.process_limits import limit_malloc_arenas, trim_malloc
from agent.core.store_writer import CACHE_KIB
from agent.ledger.reconcile import reconcile
from tests.test_ledger_support import BOOT, ident, open_ledger, snapshot, synth

T0 = 1_800_000_000
T = TypeVar("T")


def _sqlite() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.argtypes = (ctypes.c_int,)
    return lib


def _churned(db: Path, lives: int) -> None:
    """`lives` incarnations that each ran, had a final sample and ended, in one hour."""
    led = open_ledger(db, period=3600, grace=0)
    parent = ident("/churn", 2)
    t = T0 + 1
    for first in range(0, lives, 200):
        batch = [ident(f"/churn/life-{i}", 100 + i) for i in range(first, min(lives, first + 200))]
        led.observe_snapshot(snapshot(
            [(parent, synth("/churn", 2, t, cpu=first * 1000 + 1, mem=1 << 20))]
            + [(w, synth(w.cgroup, w.inode, t, cpu=10, mem=4096)) for w in batch], seq=first))
        for w in batch:
            led.observe_final(w, synth(w.cgroup, w.inode, t + 0.5, cpu=500, mem=4096), BOOT)
        t += 1
    led.storage.store.close()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _measured(lib: ctypes.CDLL, what: str, fn: Callable[[], T]) -> T:
    lib.sqlite3_memory_highwater(1)
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t0
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{what}: {took:.2f} s, SQLite high-water {lib.sqlite3_memory_highwater(0) / 2**20:.1f}"
          f" MiB, Python peak {py_peak / 2**20:.1f} MiB")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lives", type=int, default=20000)
    args = p.parse_args()
    limit_malloc_arenas()  # as agentd
    lib = _sqlite()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.db"
        _churned(path, args.lives)
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA temp_store=MEMORY")  # as the store's writer
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        rows = db.execute("SELECT COUNT(*) FROM ledger_usage").fetchone()[0]
        print(f"{args.lives} ended incarnations, {rows} usage rows in one period")
        gc.collect()
        trim_malloc()
        rss0 = _rss_mib()
        db.execute("BEGIN")
        periods = _measured(lib, "close", lambda: storage._close(db, T0 + 7200))
        for period in sorted(periods):
            _measured(lib, "reconcile", lambda p=period: reconcile(db, *p))
        _measured(lib, "commit", lambda: db.execute("COMMIT"))
        db.close()
        rss1 = _rss_mib()
        gc.collect()
        trim_malloc()
        print(f"RSS {rss0:.1f} MiB before, {rss1:.1f} after, {_rss_mib():.1f} after gc and"
              " malloc_trim")


if __name__ == "__main__":
    main()
