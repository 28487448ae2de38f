"""A bounded in-memory ring of recent per-workload values, for the web UI's charts.

Not snapshots: each cycle adds one float32 per metric per workload, written into fixed-size
arrays (one slot per step, overwritten a lap later). A step is one cycle, or several when the
window holds more than MAX_SLOTS cycles (15 min at 1 s: every 5th cycle), so memory is at most
(MAX_SLOTS + 1) x metrics x 4 bytes per live workload (7.2 KB), plus one float64 timestamp per
slot, whatever the interval. A workload's series is dropped once it has been absent for
KEEP_ABSENT_S (or the whole window, if shorter); a recreated cgroup (new inode) starts a fresh
series.

A workload whose values changed at most MAX_RUNS - 1 times in the window (an idle container: its
rates appear at the second cycle, then nothing moves) holds no array, only its runs: each row
and the cycle it started at. At 1,000 idle workloads that is 7 MB less. The array is made,
every slot filled from the runs, when one more change would exceed MAX_RUNS.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.model.snapshot import Snapshot, WorkloadState
from collectors.samples import UNLIMITED, Pressure

NAN = float("nan")


def _psi_avg10(p: Pressure | None) -> float | None:
    return p.some.avg10 if p is not None and p.some is not None else None


def _psi(resource: str) -> Callable[[WorkloadState], float | None]:
    def read(w: WorkloadState) -> float | None:
        pressure = w.sample.pressure
        return _psi_avg10(getattr(pressure, resource)) if pressure is not None else None
    return read


#: Metric name -> how to read it from a workload's state (None: no value this cycle).
METRICS: Mapping[str, Callable[[WorkloadState], float | None]] = {
    "cpu_cores": lambda w: w.rates.cpu_cores if w.rates else None,
    "memory_bytes": lambda w: w.sample.memory.current if w.sample.memory else None,
    "io_read_bytes_per_s": lambda w: w.rates.io_read_bytes_per_s if w.rates else None,
    "io_write_bytes_per_s": lambda w: w.rates.io_write_bytes_per_s if w.rates else None,
    "net_rx_bytes_per_s": lambda w: w.rates.net_rx_bytes_per_s if w.rates else None,
    "net_tx_bytes_per_s": lambda w: w.rates.net_tx_bytes_per_s if w.rates else None,
    "pids": lambda w: w.sample.pids.current if w.sample.pids else None,
    "psi_cpu_some_avg10": _psi("cpu"),
    "psi_memory_some_avg10": _psi("memory"),
    "psi_io_some_avg10": _psi("io"),
}
_NAMES = tuple(METRICS)
_READERS = tuple(METRICS.values())
_M = len(_NAMES)
#: Slots per window at most: bounds memory at a short interval.
MAX_SLOTS = 180
#: Runs of equal rows a series holds before it takes an array (a run is ~10 words, a slot row
#: 40 bytes: a handful of runs is still far below capacity x rows).
MAX_RUNS = 4

Row = tuple[float | None, ...]
#: Cycles recorded but not seen: a gap.
_ABSENT: Row = (None,) * _M
#: A workload absent this long (or the window, if shorter) is dropped: under churn, ended
#: containers' arrays (7.2 KB each) must not pile up for a whole 15-minute window.
KEEP_ABSENT_S = 60.0


def cpu_quota_cores(w: WorkloadState) -> float | None:
    cpu = w.sample.cpu
    if cpu is None or cpu.max_quota_usec in (None, UNLIMITED) or not cpu.max_period_usec:
        return None
    return (cpu.max_quota_usec or 0) / cpu.max_period_usec


def memory_limit_bytes(w: WorkloadState) -> int | None:
    mem = w.sample.memory
    if mem is None or mem.max in (None, UNLIMITED):
        return None
    return mem.max


@dataclass(slots=True)
class Series:
    """One workload incarnation: `capacity` slots x metrics, slot-major, NaN = no value."""

    inode: int
    name: str
    #: None while the rows recorded are `runs`.
    values: array[float] | None
    last_seen_wall_ns: int
    #: Latest limits: drawn as lines on the CPU and memory charts.
    cpu_quota_cores: float | None = None
    memory_limit_bytes: int | None = None
    #: (cycle number, row from that cycle on), oldest first; runs that ended before the
    #: window are dropped. Empty once `values` holds the rows.
    runs: list[tuple[int, Row]] = field(default_factory=list)


class HistoryRing:
    def __init__(self, window_s: float, interval_s: float) -> None:
        self.window_s = window_s
        self.series: dict[str, Series] = {}
        self._allocate(interval_s)

    def _allocate(self, interval_s: float) -> None:
        self.interval_s = interval_s
        #: Cycles per slot: 1 unless the window holds more than MAX_SLOTS cycles.
        self.every = max(1, math.ceil(self.window_s / interval_s / MAX_SLOTS))
        self.step_s = interval_s * self.every
        self.capacity = max(2, math.ceil(self.window_s / self.step_s) + 1)
        self.cycles = 0
        #: Wall time (s) of each slot's cycle; NaN for a slot never written.
        self.times = array("d", [NAN]) * self.capacity
        self.series.clear()
        #: Cycles recorded so far; the next one goes into slot `count % capacity`.
        self.count = 0

    def resize(self, interval_s: float) -> None:
        """A new interval (SIGHUP) changes the slot count: start over rather than mix steps."""
        if interval_s != self.interval_s:
            self._allocate(interval_s)

    def record(self, snapshot: Snapshot) -> None:
        self.cycles += 1
        if (self.cycles - 1) % self.every:
            return
        slot = self.count % self.capacity
        self.count += 1
        self.times[slot] = snapshot.wall_ns / 1e9
        base = slot * _M
        seen: set[str] = set()
        for wid, w in snapshot.workloads.items():
            row = tuple(read(w) for read in _READERS)
            s = self.series.get(wid)
            if s is None or s.inode != w.identity.inode:
                s = self.series[wid] = Series(w.identity.inode, w.identity.name, None,
                                              snapshot.wall_ns, runs=[(self.count - 1, row)])
            else:
                self._put(s, base, row)
            s.last_seen_wall_ns = snapshot.wall_ns
            s.name = w.identity.name
            s.cpu_quota_cores = cpu_quota_cores(w)
            s.memory_limit_bytes = memory_limit_bytes(w)
            seen.add(wid)
        horizon = snapshot.wall_ns - int(min(self.window_s, KEEP_ABSENT_S) * 1e9)
        for wid in [k for k, s in self.series.items()
                    if k not in seen and s.last_seen_wall_ns < horizon]:
            del self.series[wid]
        for wid, s in self.series.items():
            if wid not in seen:
                self._put(s, base, _ABSENT)

    def _put(self, s: Series, base: int, row: Row) -> None:
        """The current cycle's row (at `base` in the array), as a new run or in the array."""
        if s.values is None:
            runs = s.runs
            if runs[-1][1] == row:
                return
            cur = self.count - 1
            # A run followed by one that started at or before the window's first cycle has
            # left the window.
            while len(runs) > 1 and runs[1][0] <= cur - self.capacity + 1:
                del runs[0]
            if len(runs) < MAX_RUNS:
                runs.append((cur, row))
                return
            self._materialize(s)
        vals = s.values
        assert vals is not None
        for m, v in enumerate(row):
            vals[base + m] = NAN if v is None else v

    def _materialize(self, s: Series) -> None:
        """The series' array, every slot of the cycles recorded before the current one
        filled from its runs (NaN before the first)."""
        vals = s.values = array("f", [NAN]) * (self.capacity * _M)
        cur = self.count - 1
        for i, (first, row) in enumerate(s.runs):
            end = s.runs[i + 1][0] if i + 1 < len(s.runs) else cur
            packed = array("f", [NAN if v is None else v for v in row])
            for c in range(max(first, cur - self.capacity + 1), end):
                base = (c % self.capacity) * _M
                vals[base:base + _M] = packed
        s.runs = []

    def _slots(self) -> list[int]:
        """Slot indexes oldest first, only those written."""
        n = min(self.count, self.capacity)
        start = self.count - n
        return [(start + i) % self.capacity for i in range(n)]

    def get(self, workload_id: str) -> dict[str, object] | None:
        """JSON-ready history of one workload: times (epoch s) and one list per metric."""
        s = self.series.get(workload_id)
        if s is None:
            return None
        slots = self._slots()
        out: dict[str, list[float | None]] = {name: [] for name in _NAMES}
        if s.values is None:
            # Float32 as the array would hold it: the same numbers either way.
            runs = [(first, [None if v is None else array("f", [v])[0] for v in row])
                    for first, row in s.runs]
            i = 0
            for c in range(self.count - len(slots), self.count):
                while i + 1 < len(runs) and runs[i + 1][0] <= c:
                    i += 1
                first, row = runs[i]
                for m, name in enumerate(_NAMES):
                    out[name].append(row[m] if c >= first else None)
        vals = s.values
        for slot in slots if vals is not None else ():
            base = slot * _M
            for m, name in enumerate(_NAMES):
                v = vals[base + m]  # type: ignore[index]
                out[name].append(None if math.isnan(v) else v)
        return {
            "id": workload_id,
            "name": s.name,
            "interval_s": self.interval_s,
            "step_s": self.step_s,
            "window_s": self.window_s,
            "t": [round(self.times[i], 3) for i in slots],
            "series": out,
            "cpu_quota_cores": s.cpu_quota_cores,
            "memory_limit_bytes": s.memory_limit_bytes,
        }

    def nbytes(self) -> int:
        """Bytes held in the value arrays and the timeline (the part that grows with load)."""
        per = sum(s.values.itemsize * len(s.values) for s in self.series.values()
                  if s.values is not None)
        return per + self.times.itemsize * len(self.times)
