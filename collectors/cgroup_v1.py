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
from collectors.cgroup_v2 import CgroupDir, cpu_sample, frozen_map
from collectors.parsers import (
    ParseError,
    parse_freezer_state,
    parse_v1_blkio,
    parse_v1_limit,
    shares_to_weight,
)
from collectors.samples import EMPTY, UNLIMITED, CpuSample, IoDeviceSample, MemorySample

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: v1 memory.stat key -> v2 name. Keys not listed keep their name.
MEMORY_STAT_V2_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "rss": "anon",
        "cache": "file",
        "mapped_file": "file_mapped",
        "dirty": "file_dirty",
        "writeback": "file_writeback",
        "rss_huge": "anon_thp",
    }
)


def translate_memory_stat(v1: Mapping[str, int]) -> dict[str, int]:
    """v1 memory.stat -> v2 key names; a `total_<key>` (hierarchical, like every v2 value)
    wins over the cgroup-local `<key>`."""
    names = MEMORY_STAT_V2_NAMES
    out: dict[str, int] = {}
    totals: list[tuple[str, int]] = []
    for key, value in v1.items():
        if key.startswith("total_"):
            totals.append((key[6:], value))
        else:
            out[names.get(key, key)] = value
    for key, value in totals:
        out[names.get(key, key)] = value
    return out


def _v1_limit(d: CgroupDir, name: str) -> int | None:
    data = d.read(name)
    if data is None:
        return None
    try:
        return parse_v1_limit(data)
    except ParseError:
        return None


def read_cpu_v1(
    cpu: CgroupDir | None,
    cpuacct: CgroupDir | None,
    v2_stat: Mapping[str, int] | None,
) -> CpuSample | None:
    """Usage from cgroup2 cpu.stat when given (exact µs, see cgroupfs), else cpuacct;
    throttling, quota and weight from the v1 cpu hierarchy."""
    stat: dict[str, int] = dict(v2_stat) if v2_stat else {}
    if "usage_usec" not in stat and cpuacct is not None:
        usage = cpuacct.single("cpuacct.usage")
        if usage is not None:
            stat["usage_usec"] = usage // 1000
        ticks = cpuacct.flat("cpuacct.stat")
        if ticks is not None:
            if "user" in ticks:
                stat["user_usec"] = ticks["user"] * 1_000_000 // CLK_TCK
            if "system" in ticks:
                stat["system_usec"] = ticks["system"] * 1_000_000 // CLK_TCK
    quota = period = weight = None
    if cpu is not None:
        v1 = cpu.flat("cpu.stat")
        if v1 is not None:
            for key, ns_key, v2_key in (
                ("nr_periods", None, "nr_periods"),
                ("nr_throttled", None, "nr_throttled"),
                (None, "throttled_time", "throttled_usec"),
                ("nr_bursts", None, "nr_bursts"),
                (None, "burst_time", "burst_usec"),
            ):
                if v2_key in stat:
                    continue
                if key is not None and key in v1:
                    stat[v2_key] = v1[key]
                elif ns_key is not None and ns_key in v1:
                    stat[v2_key] = v1[ns_key] // 1000
        quota = cpu.single("cpu.cfs_quota_us")
        if quota is not None and quota < 0:
            quota = UNLIMITED
        period = cpu.single("cpu.cfs_period_us")
        shares = cpu.single("cpu.shares")
        weight = None if shares is None else shares_to_weight(shares)
    return cpu_sample(stat or None, quota, period, weight)


def read_memory_v1(d: CgroupDir, with_memsw: bool = True) -> MemorySample | None:
    current = d.single("memory.usage_in_bytes")
    peak = d.single("memory.max_usage_in_bytes")
    limit = _v1_limit(d, "memory.limit_in_bytes")
    soft = _v1_limit(d, "memory.soft_limit_in_bytes")
    raw_stat = d.flat("memory.stat")
    oom = d.flat("memory.oom_control")
    failcnt = d.single("memory.failcnt")
    swap_current = swap_max = None
    if with_memsw:
        memsw = d.single("memory.memsw.usage_in_bytes")
        memsw_limit = _v1_limit(d, "memory.memsw.limit_in_bytes")
        if memsw is not None and current is not None:
            swap_current = max(memsw - current, 0)
        if memsw_limit == UNLIMITED:
            swap_max = UNLIMITED
        elif memsw_limit is not None and limit is not None and limit != UNLIMITED:
            swap_max = max(memsw_limit - limit, 0)
    if current is None and raw_stat is None and limit is None:
        return None
    events: dict[str, int] = {}
    if oom is not None:
        for key in ("oom_kill", "under_oom"):
            if key in oom:
                events[key] = oom[key]
    if failcnt is not None:
        events["max"] = failcnt
    return MemorySample(
        current=current,
        peak=peak,
        low=soft,
        max=limit,
        swap_current=swap_current,
        swap_max=swap_max,
        stat=EMPTY if raw_stat is None else MappingProxyType(translate_memory_stat(raw_stat)),
        events=frozen_map(events),
        failcnt=failcnt,
    )


def _blkio(d: CgroupDir, name: str) -> dict[tuple[int, int], dict[str, int]] | None:
    data = d.read(name)
    if data is None:
        return None
    try:
        return parse_v1_blkio(data)
    except ParseError:
        return None


def read_io_v1(d: CgroupDir, devices: BlockDevices) -> tuple[IoDeviceSample, ...] | None:
    nbytes = _blkio(d, "blkio.throttle.io_service_bytes_recursive")
    nios = _blkio(d, "blkio.throttle.io_serviced_recursive")
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
    data = d.read("freezer.state")
    if data is None:
        return None
    try:
        return parse_freezer_state(data)
    except ParseError:
        return None
