"""A bounded in-memory ring of recent per-workload values, for the web UI's charts.

Not snapshots: each cycle adds one float32 per metric per workload, written into fixed-size
arrays (one slot per step, overwritten a lap later). A step is one cycle, or several when the
window holds more than MAX_SLOTS cycles (15 min at 1 s: every 5th cycle), so memory is at most
(MAX_SLOTS + 1) x metrics x 4 bytes per live workload (7.2 KB), plus one float64 timestamp per
slot, whatever the interval. A workload's series is dropped once it has been absent for
KEEP_ABSENT_S (or the whole window, if shorter); a recreated cgroup (new inode) starts a fresh
series.

A workload whose values have not changed since it appeared (an idle container: no CPU, the same
memory) holds no array, only its one row and when it started: at 1,000 idle workloads that is
7 MB less. The array is made, with that row in every slot since, at the first change.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
    #: None while every row recorded was `row` (from cycle number `first` on).
    values: array[float] | None
    last_seen_wall_ns: int
    #: Latest limits: drawn as lines on the CPU and memory charts.
    cpu_quota_cores: float | None = None
    memory_limit_bytes: int | None = None
    row: tuple[float | None, ...] = ()
    first: int = 0


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
                                              snapshot.wall_ns, row=row, first=self.count - 1)
            elif s.values is not None or row != s.row:
                vals = self._materialized(s)
                for m, v in enumerate(row):
                    vals[base + m] = NAN if v is None else v
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
                self._materialized(s)[base:base + _M] = array("f", [NAN]) * _M

    def _materialized(self, s: Series) -> array[float]:
        """The series' array; made at the first change of an unchanged series, with its row
        in the slots of every cycle recorded since it appeared (before the current one)."""
        if s.values is None:
            vals = s.values = array("f", [NAN]) * (self.capacity * _M)
            cur = self.count - 1
            row = array("f", [NAN if v is None else v for v in s.row])
            for c in range(max(s.first, cur - self.capacity + 1), cur):
                base = (c % self.capacity) * _M
                vals[base:base + _M] = row
        return s.values

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
            row = [None if v is None else array("f", [v])[0] for v in s.row]
            for c in range(self.count - len(slots), self.count):
                for m, name in enumerate(_NAMES):
                    out[name].append(row[m] if c >= s.first else None)
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
