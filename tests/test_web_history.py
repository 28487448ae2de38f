"""The history ring: bounded by its window, one slot per cycle, gaps as None, dropped series."""

from __future__ import annotations

from itertools import count
from types import MappingProxyType

import pytest

from agent.model.snapshot import (
    HostInfo,
    Rates,
    Snapshot,
    WorkloadIdentity,
    WorkloadKind,
    WorkloadState,
)
from agent.web.history import MAX_RUNS, METRICS, HistoryRing
from collectors.samples import UNLIMITED, CgroupSample, CpuSample, MemorySample

HOST = HostInfo("h", "b", "m", "k", "hybrid", 2, 1 << 30, "0")
S = 1_000_000_000


def state(path: str, inode: int, cpu: float, mem: int, quota: int = UNLIMITED,
          limit: int = UNLIMITED) -> WorkloadState:
    ident = WorkloadIdentity(path, WorkloadKind.CGROUP, "", path.rsplit("/", 1)[-1], path, inode)
    sample = CgroupSample(path, inode, 0, 0, cpu=CpuSample(max_quota_usec=quota,
                                                           max_period_usec=100_000),
                          memory=MemorySample(current=mem, max=limit))
    return WorkloadState(ident, sample, Rates(cpu_cores=cpu))


def snap(seq: int, t_s: float, *states: WorkloadState) -> Snapshot:
    return Snapshot(seq, int(t_s * S), 0, 0, HOST,
                    MappingProxyType({w.identity.id: w for w in states}))


def test_values_in_cycle_order_and_bounded_by_window() -> None:
    ring = HistoryRing(window_s=60, interval_s=5)
    assert ring.capacity == 13
    for i in range(40):  # three laps of the ring
        ring.record(snap(i, 1000 + 5 * i, state("/a", 7, cpu=i / 10, mem=i * 1000)))
    h = ring.get("/a")
    assert h is not None
    assert len(h["t"]) == 13  # type: ignore[arg-type]
    assert h["t"] == [1000 + 5 * i for i in range(27, 40)]
    series = h["series"]
    assert isinstance(series, dict)
    assert series["memory_bytes"] == [float(i * 1000) for i in range(27, 40)]
    assert series["cpu_cores"] == pytest.approx([i / 10 for i in range(27, 40)], rel=1e-6)
    assert set(series) == set(METRICS)
    # The arrays never grow: capacity x metrics float32 per workload, plus the timeline.
    assert ring.nbytes() == 13 * len(METRICS) * 4 + 13 * 8


def test_limits_and_gaps() -> None:
    ring = HistoryRing(window_s=60, interval_s=5)
    ring.record(snap(1, 100, state("/a", 7, 0.1, 10, quota=50_000, limit=1 << 20),
                     state("/b", 8, 0.2, 20)))
    ring.record(snap(2, 105, state("/b", 8, 0.2, 20)))  # /a missing this cycle
    ring.record(snap(3, 110, state("/a", 7, 0.3, 30, quota=50_000, limit=1 << 20)))
    a = ring.get("/a")
    assert a is not None
    assert a["series"]["memory_bytes"] == [10.0, None, 30.0]  # type: ignore[index]
    assert a["cpu_quota_cores"] == 0.5
    assert a["memory_limit_bytes"] == 1 << 20
    b = ring.get("/b")
    assert b is not None and b["cpu_quota_cores"] is None and b["memory_limit_bytes"] is None
    # A series that appeared late has None before its first cycle.
    ring.record(snap(4, 115, state("/c", 9, 0.0, 5)))
    c = ring.get("/c")
    assert c is not None and c["series"]["memory_bytes"] == [None, None, None, 5.0]  # type: ignore[index]


def test_gone_workload_dropped_after_window_and_new_incarnation_starts_fresh() -> None:
    ring = HistoryRing(window_s=60, interval_s=5)
    ring.record(snap(1, 100, state("/a", 7, 0.1, 10), state("/b", 8, 0.1, 10)))
    for i in range(2, 14):  # /a gone; still kept while within the window
        ring.record(snap(i, 100 + 5 * (i - 1), state("/b", 8, 0.1, 10)))
    assert ring.get("/a") is not None
    ring.record(snap(14, 100 + 5 * 13, state("/b", 8, 0.1, 10)))  # 65 s after /a was last seen
    assert ring.get("/a") is None
    assert set(ring.series) == {"/b"}
    # Same path, new inode: a new incarnation, its history starts empty.
    ring.record(snap(15, 100 + 5 * 14, state("/b", 99, 0.1, 77)))
    b = ring.get("/b")
    assert b is not None
    assert [v for v in b["series"]["memory_bytes"] if v is not None] == [77.0]  # type: ignore[index]


def test_new_interval_starts_over() -> None:
    ring = HistoryRing(window_s=60, interval_s=5)
    ring.record(snap(1, 100, state("/a", 7, 0.1, 10)))
    ring.resize(5)
    assert ring.get("/a") is not None
    ring.resize(1)
    assert ring.capacity == 61 and ring.get("/a") is None and ring.count == 0


def test_short_interval_keeps_every_nth_cycle() -> None:
    """15 min at 1 s would be 901 slots: every 5th cycle is kept, 181 slots at most."""
    ring = HistoryRing(window_s=900, interval_s=1)
    assert (ring.every, ring.capacity) == (5, 181)
    for i in range(1000):
        ring.record(snap(i, 1000 + i, state("/a", 7, 0.1, i)))
    h = ring.get("/a")
    assert h is not None and h["step_s"] == 5
    assert h["series"]["memory_bytes"] == [float(i) for i in range(95, 1000, 5)]  # type: ignore[index]
    assert ring.nbytes() == 181 * len(METRICS) * 4 + 181 * 8


def test_a_series_of_few_runs_holds_no_array_and_reads_the_same_once_it_has_one() -> None:
    """Idle workloads cost their runs (each row and where it started), not capacity x metrics
    floats; the history read back is the same with runs, once the array is made, and as a
    series that changed all along."""
    ring = HistoryRing(window_s=60, interval_s=5)
    ref = HistoryRing(window_s=60, interval_s=5)

    def both(i: int, *states: WorkloadState) -> None:
        ring.record(snap(i, 1000 + 5 * i, *states))
        ref.record(snap(i, 1000 + 5 * i, *states, state("/r", 9, cpu=i / 10, mem=i)))

    for i in range(20):  # /a idle for a lap and a half; /r moves every cycle from the start
        both(i, state("/a", 7, cpu=0.0, mem=4096))
    assert ring.nbytes() == 13 * 8  # the timeline only
    idle = ring.get("/a")
    assert idle is not None and idle["series"]["memory_bytes"] == [4096.0] * 13  # type: ignore[index]
    assert idle == ref.get("/a")
    # MAX_RUNS - 1 changes: still runs, read back as the array would.
    for i, mem in zip(range(20, 20 + MAX_RUNS - 1), count(8192, 4096), strict=False):
        both(i, state("/a", 7, cpu=0.5, mem=mem))
        assert ring.get("/a") == ref.get("/a")
    assert ring.nbytes() == 13 * 8
    moved = ring.get("/a")
    assert moved is not None
    assert moved["series"]["memory_bytes"] == (  # type: ignore[index]
        [4096.0] * (14 - MAX_RUNS) + [8192.0 + 4096 * k for k in range(MAX_RUNS - 1)])
    # One change more: the array, filled from the runs.
    both(19 + MAX_RUNS, state("/a", 7, cpu=0.5, mem=1))
    assert ring.get("/a") == ref.get("/a")
    assert ring.nbytes() == 13 * len(METRICS) * 4 + 13 * 8
    # A series that appeared mid-window: None before it, its row after, array or not.
    n = 20 + MAX_RUNS
    ring.record(snap(n, 1000 + 5 * n, state("/a", 7, 0.5, 1), state("/n", 11, 0.0, 1)))
    ring.record(snap(n + 1, 1005 + 5 * n, state("/a", 7, 0.5, 1), state("/n", 11, 0.0, 1)))
    late = ring.get("/n")
    assert late is not None
    assert late["series"]["memory_bytes"] == [None] * 11 + [1.0, 1.0]  # type: ignore[index]
    ring.record(snap(n + 2, 1010 + 5 * n, state("/a", 7, 0.5, 1)))  # /n absent: a gap
    gap = ring.get("/n")
    assert gap is not None
    assert gap["series"]["memory_bytes"] == [None] * 10 + [1.0, 1.0, None]  # type: ignore[index]


def test_runs_that_left_the_window_are_dropped() -> None:
    """A series that changes once per lap keeps at most two runs: it never takes an array,
    and what it reads back equals a series that took one from the start."""
    ring = HistoryRing(window_s=60, interval_s=5)
    ref = HistoryRing(window_s=60, interval_s=5)
    for i in range(100):
        mem = i // 13
        ring.record(snap(i, 1000 + 5 * i, state("/a", 7, cpu=0.0, mem=mem)))
        ref.record(snap(i, 1000 + 5 * i, state("/a", 7, cpu=0.0, mem=mem),
                        state("/r", 9, cpu=i / 10, mem=i)))
        assert len(ring.series["/a"].runs) <= 2
        assert ring.get("/a") == ref.get("/a")
    assert ring.nbytes() == 13 * 8
