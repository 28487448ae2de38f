"""Small pure helpers of the events component: identities, final reads, event fields."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from agent.identity.classify import classify
from agent.model.snapshot import WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.samples import CgroupSample

if TYPE_CHECKING:
    from agent.kernel.watched import WatchedCgroup
    from agent.model.snapshot import Snapshot

log = logging.getLogger("agent.events")


def identify(path: str, inode: int) -> WorkloadIdentity:
    """The identity of a cgroup seen before discovery named it (path rules only)."""
    name = path.rsplit("/", 1)[-1] or "/"
    c = classify(path)
    return WorkloadIdentity(
        id=c.id or path, kind=c.kind, runtime=c.runtime, name=c.name or name, cgroup=path,
        inode=inode, pod_uid=c.pod_uid, qos_class=c.qos_class,
    )


def mirrors_children(cg: WatchedCgroup) -> bool:
    """A plain cgroup with child cgroups (a slice, a test prefix): its lifecycle is theirs.

    Containers and services keep their events even with children (init.scope inside one).
    """
    return cg.has_children and cg.identity.kind == WorkloadKind.CGROUP


def nothing_ran(at_empty: CgroupSample | None, usage_before: int) -> bool:
    """Read at `populated 0`: the CPU counter did not move, so no process ran since."""
    cpu = at_empty.cpu if at_empty is not None else None
    return cpu is not None and cpu.usage_usec is not None and cpu.usage_usec <= usage_before


def final_of(full: CgroupSample, at_empty: CgroupSample | None) -> tuple[CgroupSample, bool]:
    """The final sample and whether it is partial: the full read, or, when the cgroup was
    removed before it, the CPU counter read from the kept fd the moment it emptied."""
    no_cpu = full.cpu is None or full.cpu.usage_usec is None
    if (full.vanished or no_cpu) and at_empty is not None:
        return at_empty, True
    if no_cpu and full.memory is None and full.io is None and full.pids is None:
        # Removed during the read (every file answered ENODEV): nothing final in it.
        return replace(full, vanished=True), False
    return full, False


def final_fields(sample: CgroupSample) -> dict[str, object]:
    """What container_stopped carries: the cgroup's lifetime totals at the end."""
    out: dict[str, object] = {}
    cpu = sample.cpu
    if cpu is not None and cpu.usage_usec is not None:
        out["cpu_usage_usec"] = cpu.usage_usec
        out["cpu_seconds"] = cpu.usage_usec / 1e6
        out["cpu_user_usec"] = cpu.user_usec
        out["cpu_system_usec"] = cpu.system_usec
    mem = sample.memory
    if mem is not None:
        out["memory_peak_bytes"] = mem.peak
        if mem.events:
            out["oom_kills"] = mem.events.get("oom_kill")
    io = sample.io_totals
    if io is not None:
        out["io_read_bytes"], out["io_write_bytes"] = io[0], io[1]
        out["io_read_ops"], out["io_write_ops"] = io[2], io[3]
    if sample.pids is not None:
        out["pids_peak"] = sample.pids.peak
    return out


def net_totals(snapshot: Snapshot, workload_id: str) -> dict[str, object]:
    """rx/tx bytes of the container's network namespace, as the last cycle saw them."""
    net = snapshot.extras.get("network")
    totals = getattr(net, "totals_by_workload", None)
    if not isinstance(totals, Mapping):
        return {}
    pair = totals.get(workload_id)
    if not isinstance(pair, tuple) or len(pair) != 2:
        return {}
    return {"net_rx_bytes": pair[0], "net_tx_bytes": pair[1]}


def pressure_fields(text: str) -> dict[str, object]:
    """`some avg10=.. total=..` lines as some_avg10, some_total_usec, full_avg10, ..."""
    out: dict[str, object] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        for item in rest.split():
            k, _, v = item.partition("=")
            try:
                if k == "total":
                    out[f"{kind}_total_usec"] = int(v)
                elif k in ("avg10", "avg60"):
                    out[f"{kind}_{k}"] = float(v)
            except ValueError:
                continue
    return out


def throttle_episode(throttled: set[tuple[str, int]], state: WorkloadState,
                     prev: WorkloadState | None, limit: float) -> dict[str, object] | None:
    """The cpu_throttled event's fields when an episode starts (once per episode: `throttled`
    holds the incarnations in one); None otherwise."""
    if prev is None:
        return None
    key = state.identity.incarnation
    if limit > 0 and state.sample.cpu is prev.sample.cpu:  # an idle re-read: not throttled
        throttled.discard(key)
        return None
    share = throttled_share(prev.sample, state.sample)
    if share is None or share < limit:
        throttled.discard(key)
        return None
    if key in throttled:
        return None  # still throttled: one event per episode
    throttled.add(key)
    window = (state.sample.monotonic_ns - prev.sample.monotonic_ns) / 1e9
    return {"share": round(share, 4), "threshold": limit, "window_s": round(window, 3)}


def throttled_share(prev: CgroupSample, cur: CgroupSample) -> float | None:
    """Share of the wall time between two samples the cgroup spent throttled."""
    if prev.cpu is None or cur.cpu is None or prev.inode != cur.inode:
        return None
    a, b = prev.cpu.throttled_usec, cur.cpu.throttled_usec
    dt_us = (cur.monotonic_ns - prev.monotonic_ns) / 1000
    if a is None or b is None or b < a or dt_us <= 0:
        return None
    return (b - a) / dt_us


