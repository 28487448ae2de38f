"""Filling the CgroupSample parts from cgroup v1 files, converted to the cgroup v2 units.

Conversions (so that consumers never care which version a host runs):
- time: cpuacct.usage and v1 cpu.stat throttled_time/burst_time are ns -> µs; cpuacct.stat is
  USER_HZ ticks -> µs (os.sysconf("SC_CLK_TCK"));
- cpu.cfs_quota_us -1 -> UNLIMITED; cpu.shares -> cpu.weight with runc's/Kubernetes' formula;
- memory: usage_in_bytes -> current, max_usage_in_bytes -> peak, limit_in_bytes -> max
  (the page-rounded LONG_MAX -> UNLIMITED), soft_limit_in_bytes -> low (runc maps a memory
  reservation to memory.low), memsw (memory+swap) -> swap = memsw - memory;
- memory.stat keys renamed to their v2 names, hierarchical total_* values preferred;
- memory.oom_control oom_kill/under_oom and memory.failcnt -> memory.events oom_kill, under_oom
  and max (failcnt counts the charges that hit the limit, like v2's `max` event);
- blkio.throttle.*_recursive Read/Write/Discard -> rbytes/wbytes/dbytes, rios/wios/dios;
- freezer.state FROZEN -> frozen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

from collectors.blockdev import BlockDevices
from collectors.cgroup_dir import CgroupDir, flat, frozen_map, parsed, single
from collectors.cgroup_v2 import cpu_sample
from collectors.parsers import (
    parse_freezer_state,
    parse_v1_blkio,
    parse_v1_limit,
    parse_v1_memory_stat,
    shares_to_weight,
)
from collectors.samples import EMPTY, UNLIMITED, CpuSample, IoDeviceSample, MemorySample

CLK_TCK = os.sysconf("SC_CLK_TCK")


_CPU_LIMIT_FILES = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares")
_THROTTLE_KEYS = ("nr_periods", "nr_throttled", "nr_bursts", "throttled_usec", "burst_usec")


def read_cpu_v1(
    cpu: CgroupDir | None,
    cpuacct: CgroupDir | None,
    v2_stat: Mapping[str, int] | None,
    prev: CpuSample | None = None,
    *,
    limits: bool = True,
    refresh: bool = False,
) -> CpuSample | None:
    """Usage from cgroup2 cpu.stat when given (exact µs, see cgroupfs), else cpuacct;
    throttling, quota and weight from the v1 cpu hierarchy.

    `prev` (the last read's part, None: read everything): when usage_usec has not moved since,
    the counters that move only while the cgroup's tasks run (cpuacct.stat, v1 cpu.stat
    throttling) are taken from it unread. `limits` False: quota, period and shares are taken
    from `prev` (nothing was written to the directory since, see CgroupReader). `refresh`:
    the counters are read even if usage did not move."""
    stat: dict[str, int] = dict(v2_stat) if v2_stat else {}
    from_acct = "usage_usec" not in stat and cpuacct is not None
    if from_acct and cpuacct is not None:
        usage = single(cpuacct.read("cpuacct.usage"))
        if usage is not None:
            stat["usage_usec"] = usage // 1000
    usage_usec = stat.get("usage_usec")
    moved = refresh or prev is None or usage_usec is None or usage_usec != prev.usage_usec
    if from_acct and cpuacct is not None:
        if moved:
            ticks = cpuacct.flat("cpuacct.stat", keep=prev is not None and not refresh)
            if ticks is not None:
                if "user" in ticks:
                    stat["user_usec"] = ticks["user"] * 1_000_000 // CLK_TCK
                if "system" in ticks:
                    stat["system_usec"] = ticks["system"] * 1_000_000 // CLK_TCK
        elif prev is not None:
            _keep(stat, prev, ("user_usec", "system_usec"))
    quota = period = weight = None
    if cpu is not None:
        if moved:
            v1 = cpu.flat("cpu.stat", keep=prev is not None and not refresh)
            if v1 is not None:
                # v2 values (when the cgroup2 file had them) win; v1 times are ns.
                for key in ("nr_periods", "nr_throttled", "nr_bursts"):
                    if key in v1:
                        stat.setdefault(key, v1[key])
                for ns_key, key in (("throttled_time", "throttled_usec"),
                                    ("burst_time", "burst_usec")):
                    if ns_key in v1 and key not in stat:
                        stat[key] = v1[ns_key] // 1000
        elif prev is not None:
            _keep(stat, prev, _THROTTLE_KEYS)
        if limits or prev is None:
            quota_b, period_b, shares_b = cpu.read_many(_CPU_LIMIT_FILES, keep=False)
            quota = single(quota_b)
            if quota is not None and quota < 0:
                quota = UNLIMITED
            period = single(period_b)
            shares = single(shares_b)
            weight = None if shares is None else shares_to_weight(shares)
        else:
            quota, period, weight = prev.max_quota_usec, prev.max_period_usec, prev.weight
    return cpu_sample(stat or None, quota, period, weight)


def _keep(stat: dict[str, int], prev: CpuSample, keys: tuple[str, ...]) -> None:
    """Copy the previous values of counters that have not moved (absent ones stay absent)."""
    for key in keys:
        value = getattr(prev, key)
        if value is not None and key not in stat:
            stat[key] = value


#: Read at every read: they change without CPU in the cgroup (reclaim, writeback, charges
#: from outside such as socket buffers in softirq).
_MEMORY_FILES = (
    "memory.usage_in_bytes",
    "memory.max_usage_in_bytes",
    "memory.stat",
    "memory.failcnt",
)
_MEMSW_USAGE = ("memory.memsw.usage_in_bytes",)
#: memory.oom_control moves only while the cgroup's tasks run (an OOM kill happens in a
#: task's charge). Limits change only by a write to the directory.
_MEMORY_LIMITS = ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
_MEMSW_LIMIT = ("memory.memsw.limit_in_bytes",)


def read_memory_v1(
    d: CgroupDir,
    with_memsw: bool = True,
    prev: MemorySample | None = None,
    *,
    moved: bool = True,
    limits: bool = True,
    keep: bool = True,
) -> MemorySample | None:
    """`with_memsw`: the host has swap accounting (memsw files), judged once by the caller.
    `prev` with `moved` False: oom_control's counters taken from it unread; with `limits`
    False: the limits taken from it unread (see read_cpu_v1)."""
    read_oom = moved or prev is None
    read_limits = limits or prev is None
    names = _MEMORY_FILES + (_MEMSW_USAGE if with_memsw else ())
    got = dict(zip(names, d.read_many(names), strict=True))
    # Kept open only when read because the cgroup ran (not on a whole read of an idle one).
    if read_oom:
        got["memory.oom_control"] = d.read("memory.oom_control", keep=prev is not None and keep)
    if read_limits:
        seldom = _MEMORY_LIMITS + (_MEMSW_LIMIT if with_memsw else ())
        got.update(zip(seldom, d.read_many(seldom, keep=False), strict=True))
    current = single(got["memory.usage_in_bytes"])
    raw_stat = d.memo("memory.stat", got["memory.stat"], _v1_memory_stat)
    failcnt = single(got["memory.failcnt"])
    if read_limits:
        limit = parsed(parse_v1_limit, got["memory.limit_in_bytes"])
        low = parsed(parse_v1_limit, got["memory.soft_limit_in_bytes"])
    else:
        assert prev is not None
        limit, low = prev.max, prev.low
    swap_current = swap_max = None
    if with_memsw:
        memsw = single(got["memory.memsw.usage_in_bytes"])
        if memsw is not None and current is not None:
            swap_current = max(memsw - current, 0)
        if not read_limits:
            assert prev is not None
            swap_max = prev.swap_max
        else:
            memsw_limit = parsed(parse_v1_limit, got["memory.memsw.limit_in_bytes"])
            if memsw_limit == UNLIMITED:
                swap_max = UNLIMITED
            elif memsw_limit is not None and limit is not None and limit != UNLIMITED:
                swap_max = max(memsw_limit - limit, 0)
    if current is None and raw_stat is None and limit is None:
        return None
    events: dict[str, int] = {}
    if read_oom:
        oom = flat(got["memory.oom_control"])
        if oom is not None:
            for key in ("oom_kill", "under_oom"):
                if key in oom:
                    events[key] = oom[key]
    else:
        assert prev is not None
        events.update((k, v) for k, v in prev.events.items() if k != "max")
    if failcnt is not None:
        events["max"] = failcnt
    return MemorySample(
        current=current,
        peak=single(got["memory.max_usage_in_bytes"]),
        low=low,
        max=limit,
        swap_current=swap_current,
        swap_max=swap_max,
        stat=raw_stat or EMPTY,
        events=frozen_map(events),
        failcnt=failcnt,
    )


def _v1_memory_stat(data: bytes | None) -> Mapping[str, int] | None:
    raw = parsed(parse_v1_memory_stat, data)
    return None if raw is None else frozen_map(raw)


_BLKIO_FILES = ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive")


def read_io_v1(
    d: CgroupDir, devices: BlockDevices, keep: bool = True
) -> tuple[IoDeviceSample, ...] | None:
    """`keep`: keep the files open (read because the cgroup ran, so likely read again)."""
    bytes_b, ios_b = d.read_many(_BLKIO_FILES, keep)
    nbytes = parsed(parse_v1_blkio, bytes_b)
    nios = parsed(parse_v1_blkio, ios_b)
    if nbytes is None and nios is None:
        return None
    b = nbytes or {}
    n = nios or {}
    out: list[IoDeviceSample] = []
    for dev in sorted(b.keys() | n.keys()):
        bv = b.get(dev, {})
        nv = n.get(dev, {})
        extra: dict[str, float] = {}
        for op in ("Sync", "Async"):
            if op in bv:
                extra[f"{op.lower()}_bytes"] = bv[op]
            if op in nv:
                extra[f"{op.lower()}_ios"] = nv[op]
        out.append(
            IoDeviceSample(
                major=dev[0],
                minor=dev[1],
                device=devices.name(dev[0], dev[1]),
                rbytes=bv.get("Read"),
                wbytes=bv.get("Write"),
                rios=nv.get("Read"),
                wios=nv.get("Write"),
                dbytes=bv.get("Discard"),
                dios=nv.get("Discard"),
                extra=MappingProxyType(extra),
            )
        )
    return tuple(out)


def read_freezer_v1(d: CgroupDir) -> bool | None:
    return parsed(parse_freezer_state, d.read("freezer.state"))
