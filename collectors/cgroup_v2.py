"""Filling the CgroupSample parts from one cgroup2 directory's files (read through CgroupDir,
see cgroup_dir for the error rules)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from collectors.cgroup_dir import flat, frozen_flat, parsed, single
from collectors.parsers import (
    ParseError,
    parse_cpu_max,
    parse_events,
    parse_io_stat,
    parse_pressure,
)
from collectors.samples import (
    EMPTY,
    CpuSample,
    IoDeviceSample,
    MemorySample,
    PidsSample,
    PressureSample,
)

if TYPE_CHECKING:
    from collectors.blockdev import BlockDevices
    from collectors.cgroup_dir import CgroupDir

PSI_KINDS = ("cpu", "memory", "io", "irq")


def parse_controllers(data: bytes | None) -> frozenset[str] | None:
    """cgroup.controllers: which controllers' interface files this cgroup has."""
    if data is None:
        return None
    try:
        return frozenset(data.decode().split())
    except ValueError:
        return None


def events(data: bytes | None) -> tuple[bool | None, bool | None]:
    """cgroup.events (populated, frozen), (None, None) when unreadable."""
    if data is None:
        return None, None
    try:
        return parse_events(data)
    except ParseError:
        return None, None


def cpu_sample(
    stat: Mapping[str, int] | None,
    quota: int | None = None,
    period: int | None = None,
    weight: int | None = None,
) -> CpuSample | None:
    if stat is None and quota is None and weight is None:
        return None
    s = stat or EMPTY
    return CpuSample(
        usage_usec=s.get("usage_usec"),
        user_usec=s.get("user_usec"),
        system_usec=s.get("system_usec"),
        nr_periods=s.get("nr_periods"),
        nr_throttled=s.get("nr_throttled"),
        throttled_usec=s.get("throttled_usec"),
        nr_bursts=s.get("nr_bursts"),
        burst_usec=s.get("burst_usec"),
        max_quota_usec=quota,
        max_period_usec=period,
        weight=weight,
    )


def cpu_limits(
    d: CgroupDir, prev: CpuSample | None = None, *, limits: bool = True
) -> tuple[int | None, int | None, int | None]:
    """(quota, period, weight) from cpu.max and cpu.weight (files of the cpu controller);
    from `prev` unread when `limits` is False."""
    if not limits and prev is not None:
        return prev.max_quota_usec, prev.max_period_usec, prev.weight
    max_b, weight_b = d.read_many(("cpu.max", "cpu.weight"), keep=False)
    quota = period = None
    if max_b is not None:
        with contextlib.suppress(ParseError):
            quota, period = parse_cpu_max(max_b)
    return quota, period, single(weight_b)


#: Read at every read (they change without CPU in the cgroup: reclaim, writeback, charges from
#: outside); memory.events also because the kernel's notification of it is asynchronous.
_MEMORY_FILES = (
    "memory.current",
    "memory.peak",
    "memory.swap.current",
    "memory.stat",
    "memory.events",
)
#: Limits: change only by a write to the directory (see CgroupReader).
_MEMORY_LIMITS = ("memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.max")


def read_memory(
    d: CgroupDir, prev: MemorySample | None = None, *, limits: bool = True
) -> MemorySample | None:
    """`limits` False with a `prev`: the limits are taken from it unread."""
    read_limits = limits or prev is None
    datas = d.read_many(_MEMORY_FILES)
    if read_limits:
        datas += d.read_many(_MEMORY_LIMITS, keep=False)
    cur, peak, swc, stat_b, events_b = datas[:5]
    stat = d.memo("memory.stat", stat_b, frozen_flat)
    events = d.memo("memory.events", events_b, frozen_flat)
    current = single(cur)
    if read_limits:
        mn, low, high, mx, swm = (single(b) for b in datas[5:])
    else:
        assert prev is not None
        mn, low, high, mx, swm = prev.min, prev.low, prev.high, prev.max, prev.swap_max
    if current is None and stat is None and events is None and mx is None:
        return None
    return MemorySample(
        current=current,
        peak=single(peak),
        min=mn,
        low=low,
        high=high,
        max=mx,
        swap_current=single(swc),
        swap_max=swm,
        stat=stat or EMPTY,
        events=events or EMPTY,
    )


def read_io(d: CgroupDir, devices: BlockDevices) -> tuple[IoDeviceSample, ...] | None:
    data = d.read("io.stat")
    if data is None:
        return None
    try:
        lines = parse_io_stat(data)
    except ParseError:
        # A truncated or garbled io.stat (kernel one-page limit): no IO rather than wrong IO.
        return None
    name = devices.name
    return tuple(
        IoDeviceSample(
            major=ln.major,
            minor=ln.minor,
            device=name(ln.major, ln.minor),
            rbytes=ln.known.get("rbytes"),
            wbytes=ln.known.get("wbytes"),
            rios=ln.known.get("rios"),
            wios=ln.known.get("wios"),
            dbytes=ln.known.get("dbytes"),
            dios=ln.known.get("dios"),
            extra=ln.extra,
        )
        for ln in lines
    )


def read_pids(
    d: CgroupDir, prev: PidsSample | None = None, *, moved: bool = True, limits: bool = True,
    keep: bool = True,
) -> PidsSample | None:
    """pids.current/max/events/peak: the same files in cgroup2 and in the v1 pids hierarchy.

    pids.current is always read (a task moved out changes it without CPU in the cgroup).
    With a `prev`: pids.events (a refused fork) and pids.peak (a fork, or a task moved in:
    a write to the directory) are taken from it unread unless `moved` (CPU used since) or
    the current count exceeds the last peak; pids.max unless `limits`."""
    read_limits = limits or prev is None
    current = single(d.read("pids.current"))
    read_counters = (
        moved or prev is None or (current or 0) > (prev.peak or prev.current or 0) or limits
    )
    names = ("pids.events", "pids.peak") if read_counters else ()
    got = dict(zip(names, d.read_many(names, keep=moved and keep), strict=True))
    if read_limits:
        got["pids.max"] = d.read("pids.max", keep=False)
    if read_limits:
        limit = single(got["pids.max"])
    else:
        assert prev is not None
        limit = prev.max
    if read_counters:
        events = flat(got["pids.events"])
        events_max = None if events is None else events.get("max")
        peak = single(got["pids.peak"])
        found = events is not None
    else:
        assert prev is not None
        events_max, peak, found = prev.events_max, prev.peak, True
    if current is None and limit is None and not found:
        return None
    return PidsSample(current=current, max=limit, peak=peak, events_max=events_max)


def pressure_sample(
    files: Sequence[str], datas: Sequence[bytes | None], unsupported: bool
) -> PressureSample | None:
    """From the contents of `files` (`<kind>.pressure` names); None when none was read."""
    if unsupported:
        return PressureSample(supported=False)
    found = {f: parsed(parse_pressure, d) for f, d in zip(files, datas, strict=True)}
    if not any(found.values()):
        return None
    return PressureSample(
        cpu=found.get("cpu.pressure"),
        memory=found.get("memory.pressure"),
        io=found.get("io.pressure"),
        irq=found.get("irq.pressure"),
    )


def psi_files_at(root: str) -> tuple[str, ...]:
    """The PSI files a hierarchy has, judged at its root (irq needs IRQ time accounting)."""
    names = (f"{k}.pressure" for k in PSI_KINDS)
    return tuple(n for n in names if os.path.exists(f"{root}/{n}"))
