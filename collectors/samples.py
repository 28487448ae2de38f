"""Typed, immutable samples read from cgroupfs.

Every field is Optional: a file may be absent on this kernel or controller (None), which is
different from a value of 0. Limits read as `max` are None with the matching `*_is_max` flag
where the distinction matters to a user ("no limit" vs "not readable"). Units are the cgroup v2
units whatever the source: microseconds for time, bytes for memory and IO, counts for events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

EMPTY: Mapping[str, int] = MappingProxyType({})
_V = TypeVar("_V")

#: An unlimited value (`max`) is reported as this sentinel in limit fields.
UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class CpuSample:
    usage_usec: int | None = None
    user_usec: int | None = None
    system_usec: int | None = None
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    nr_bursts: int | None = None
    burst_usec: int | None = None
    #: `cpu.max` quota in µs per period; UNLIMITED for `max`, None when not readable.
    max_quota_usec: int | None = None
    max_period_usec: int | None = None
    #: `cpu.weight` (1-10000); on v1 converted from cpu.shares.
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class MemorySample:
    current: int | None = None
    peak: int | None = None
    #: Limits: UNLIMITED for `max`, None when not readable.
    min: int | None = None
    low: int | None = None
    high: int | None = None
    max: int | None = None
    swap_current: int | None = None
    swap_max: int | None = None
    #: Every `memory.stat` key, by name (v1 keys are translated to their v2 names).
    stat: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    #: `memory.events` keys: low, high, max, oom, oom_kill, oom_group_kill
    #: (v1: oom_kill from memory.oom_control).
    events: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    #: v1 only: memory.failcnt.
    failcnt: int | None = None

    @property
    def working_set(self) -> int | None:
        """current minus inactive_file, floored at 0 (cAdvisor's definition)."""
        if self.current is None:
            return None
        inactive = self.stat.get("inactive_file", 0)
        return max(self.current - inactive, 0)


@dataclass(frozen=True, slots=True)
class IoDeviceSample:
    major: int
    minor: int
    #: Kernel device name from /sys/dev/block/MAJ:MIN/uevent (DEVNAME), else "MAJ:MIN".
    device: str
    rbytes: int | None = None
    wbytes: int | None = None
    rios: int | None = None
    wios: int | None = None
    dbytes: int | None = None
    dios: int | None = None
    #: Keys we do not know (cost.*, depth, avg_lat, ...), kept as read.
    extra: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class PidsSample:
    current: int | None = None
    #: UNLIMITED for `max`.
    max: int | None = None
    peak: int | None = None
    events_max: int | None = None


@dataclass(frozen=True, slots=True)
class PressureLine:
    avg10: float
    avg60: float
    avg300: float
    #: Cumulative stall time, µs.
    total: int


@dataclass(frozen=True, slots=True)
class Pressure:
    some: PressureLine | None = None
    full: PressureLine | None = None


@dataclass(frozen=True, slots=True)
class PressureSample:
    cpu: Pressure | None = None
    memory: Pressure | None = None
    io: Pressure | None = None
    irq: Pressure | None = None
    #: False when the kernel answered EOPNOTSUPP (PSI disabled).
    supported: bool = True


@dataclass(frozen=True, slots=True)
class CgroupSample:
    """Everything read for one cgroup in one pass.

    `path` is the cgroup's path relative to the reference hierarchy root, always starting with
    "/" ("/" for the root). `inode` is the directory inode in the reference hierarchy: a cgroup
    removed and created again at the same path is a new incarnation with a new inode.
    """

    path: str
    inode: int | None
    #: time.monotonic_ns() and time.time_ns() when the read started.
    monotonic_ns: int
    wall_ns: int
    #: True when the cgroup disappeared while being read (ENOENT/ENODEV on its directory).
    vanished: bool = False
    cpu: CpuSample | None = None
    memory: MemorySample | None = None
    io: tuple[IoDeviceSample, ...] | None = None
    pids: PidsSample | None = None
    pressure: PressureSample | None = None
    #: cgroup.events (v2); on v1 `frozen` comes from freezer.state.
    populated: bool | None = None
    frozen: bool | None = None
    #: cgroup.stat keys (nr_descendants, nr_dying_descendants, ...).
    stat: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    #: Per v1 controller, the path read in that hierarchy (differs between hierarchies).
    v1_paths: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def at(self, monotonic_ns: int, wall_ns: int) -> CgroupSample:
        """The same values, read again at another time (dataclasses.replace, 5x faster)."""
        return CgroupSample(
            self.path, self.inode, monotonic_ns, wall_ns, self.vanished, self.cpu, self.memory,
            self.io, self.pids, self.pressure, self.populated, self.frozen, self.stat,
            self.v1_paths,
        )

    def same_values(self, other: CgroupSample) -> bool:
        """Shares every value with `other`, object for object (an idle re-read's sample and
        the one it stands for): equal without comparing a field."""
        return (
            self.cpu is other.cpu and self.memory is other.memory and self.io is other.io
            and self.pids is other.pids and self.stat is other.stat
            and self.pressure is other.pressure and self.inode == other.inode
            and self.populated is other.populated and self.frozen is other.frozen
        )

    def sharing(self, prev: CgroupSample) -> CgroupSample:
        """This sample with each value equal to `prev`'s replaced by `prev`'s object, so that
        same_values() holds for an unchanged cgroup whose files were parsed anew (one whose
        directory the reader could not keep open): the users of same_values (rates, the
        ledger's idle samples, the /metrics row cache) then skip it as they skip an idle
        re-read."""
        cpu, memory, io = _kept(self.cpu, prev.cpu), _kept(self.memory, prev.memory), _kept(
            self.io, prev.io)
        pids, pressure = _kept(self.pids, prev.pids), _kept(self.pressure, prev.pressure)
        stat = _kept(self.stat, prev.stat)
        if (cpu is self.cpu and memory is self.memory and io is self.io and pids is self.pids
                and pressure is self.pressure and stat is self.stat):
            return self
        return CgroupSample(
            self.path, self.inode, self.monotonic_ns, self.wall_ns, self.vanished, cpu, memory,
            io, pids, pressure, self.populated, self.frozen, stat, self.v1_paths,
        )

    @property
    def io_totals(self) -> tuple[int, int, int, int] | None:
        """(rbytes, wbytes, rios, wios) summed over devices."""
        if self.io is None:
            return None
        return (
            sum(d.rbytes or 0 for d in self.io),
            sum(d.wbytes or 0 for d in self.io),
            sum(d.rios or 0 for d in self.io),
            sum(d.wios or 0 for d in self.io),
        )


def _kept(new: _V, old: _V) -> _V:
    """`old` where it equals `new` (an immutable value: either object stands for both)."""
    return old if new is old or (new is not None and new == old) else new
