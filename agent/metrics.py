"""Prometheus metric families from a Snapshot (never from the kernel).

Names follow Prometheus conventions: base units, `_total` for counters, `_seconds`, `_bytes`.
Every workload series carries id, name, runtime, kind, cgroup, pod and namespace labels.
The `cadvisor` option adds cAdvisor's names and labels for the metrics we share (see
cadvisor_compat.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.model import Snapshot, WorkloadState
from collectors.samples import UNLIMITED, Pressure

P = "container_agent_"
LABELS = ["id", "name", "runtime", "kind", "cgroup", "pod", "namespace"]

MEMORY_STAT_BYTES = (
    "anon", "file", "kernel", "kernel_stack", "pagetables", "sock", "shmem", "file_mapped",
    "file_dirty", "file_writeback", "slab", "slab_reclaimable", "slab_unreclaimable",
    "active_file", "inactive_file", "active_anon", "inactive_anon",
)


def label_value(value: str | None) -> str:
    """A label value that always encodes: undecodable bytes become \\xNN text."""
    if value is None:
        return ""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")


def workload_labels(w: WorkloadState) -> list[str]:
    i = w.identity
    return [
        label_value(i.id), label_value(i.name), i.runtime, i.kind.value, label_value(i.cgroup),
        label_value(i.pod_name), label_value(i.namespace),
    ]


class Families:
    """Lazily created families, kept in first-use order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = CounterMetricFamily(name, doc, labels=labels)
        assert isinstance(fam, CounterMetricFamily)
        return fam

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = GaugeMetricFamily(name, doc, labels=labels)
        assert isinstance(fam, GaugeMetricFamily)
        return fam

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def _pressure(fams: Families, lv: list[str], resource: str, p: Pressure | None) -> None:
    if p is None:
        return
    # `level` (some/full), not `kind`: `kind` is already the workload kind label.
    for level, line in (("some", p.some), ("full", p.full)):
        if line is None:
            continue
        fams.counter(
            P + "pressure_stalled_seconds_total",
            "PSI: cumulative time some or all tasks stalled on the resource",
            [*LABELS, "resource", "level"],
        ).add_metric([*lv, resource, level], line.total / 1e6)
        g = fams.gauge(
            P + "pressure_ratio",
            "PSI: share of time stalled, averaged over the window (0-1)",
            [*LABELS, "resource", "level", "window"],
        )
        g.add_metric([*lv, resource, level, "10s"], line.avg10 / 100)
        g.add_metric([*lv, resource, level, "60s"], line.avg60 / 100)
        g.add_metric([*lv, resource, level, "300s"], line.avg300 / 100)


def _workload(fams: Families, w: WorkloadState) -> None:
    lv = workload_labels(w)
    s = w.sample
    i = w.identity
    fams.gauge(P + "workload_info", "Identity of a tracked workload (always 1)",
               [*LABELS, "inode", "init_pid"]).add_metric(
        [*lv, str(i.inode), str(i.init_pid or "")], 1)
    if s.cpu is not None:
        c = s.cpu
        for name, value, doc in (
            ("cpu_usage_seconds_total", c.usage_usec, "CPU time consumed"),
            ("cpu_user_seconds_total", c.user_usec, "CPU time in user mode"),
            ("cpu_system_seconds_total", c.system_usec, "CPU time in kernel mode"),
            ("cpu_throttled_seconds_total", c.throttled_usec, "Time throttled by its own cpu.max"),
            ("cpu_burst_seconds_total", c.burst_usec, "Time run in burst above quota"),
        ):
            if value is not None:
                fams.counter(P + name, doc, LABELS).add_metric(lv, value / 1e6)
        for name, value, doc in (
            ("cpu_periods_total", c.nr_periods, "Enforcement periods elapsed"),
            ("cpu_throttled_periods_total", c.nr_throttled, "Periods in which it was throttled"),
            ("cpu_bursts_total", c.nr_bursts, "Periods in which it used burst"),
        ):
            if value is not None:
                fams.counter(P + name, doc, LABELS).add_metric(lv, value)
        if c.max_quota_usec is not None and c.max_quota_usec != UNLIMITED and c.max_period_usec:
            fams.gauge(P + "cpu_quota_cores", "CPU limit (cpu.max) in cores", LABELS).add_metric(
                lv, c.max_quota_usec / c.max_period_usec)
        if c.weight is not None:
            fams.gauge(P + "cpu_weight", "cpu.weight (1-10000)", LABELS).add_metric(lv, c.weight)
    if s.memory is not None:
        m = s.memory
        for name, value, doc in (
            ("memory_usage_bytes", m.current, "Memory charged (memory.current)"),
            ("memory_working_set_bytes", m.working_set, "usage minus inactive file cache"),
            ("memory_peak_bytes", m.peak, "Highest usage recorded"),
            ("memory_swap_bytes", m.swap_current, "Swap used"),
        ):
            if value is not None:
                fams.gauge(P + name, doc, LABELS).add_metric(lv, value)
        lim = fams.gauge(P + "memory_limit_bytes", "Memory limits; absent when unlimited",
                         [*LABELS, "limit"])
        for kind, value in (("max", m.max), ("high", m.high), ("low", m.low), ("min", m.min),
                            ("swap_max", m.swap_max)):
            if value is not None and value != UNLIMITED:
                lim.add_metric([*lv, kind], value)
        stat = fams.gauge(P + "memory_stat_bytes", "memory.stat amounts", [*LABELS, "stat"])
        for key in MEMORY_STAT_BYTES:
            v = m.stat.get(key)
            if v is not None:
                stat.add_metric([*lv, key], v)
        for key, label, name in (
            ("pgfault", "minor", "memory_faults_total"),
            ("pgmajfault", "major", "memory_faults_total"),
            ("workingset_refault_anon", "anon", "memory_workingset_refaults_total"),
            ("workingset_refault_file", "file", "memory_workingset_refaults_total"),
        ):
            v = m.stat.get(key)
            if v is not None:
                fams.counter(P + name, f"memory.stat {name[7:-6]}", [*LABELS, "type"]).add_metric(
                    [*lv, label], v)
        ev = fams.counter(P + "memory_events_total", "memory.events counters",
                          [*LABELS, "event"])
        for key, v in sorted(m.events.items()):
            ev.add_metric([*lv, key], v)
    if s.io is not None:
        for d in s.io:
            dl = [*lv, label_value(d.device)]
            for name, value in (
                ("io_read_bytes_total", d.rbytes), ("io_write_bytes_total", d.wbytes),
                ("io_reads_total", d.rios), ("io_writes_total", d.wios),
                ("io_discard_bytes_total", d.dbytes), ("io_discards_total", d.dios),
            ):
                if value is not None:
                    fams.counter(P + name, "Block IO per device", [*LABELS, "device"]).add_metric(
                        dl, value)
    if s.pids is not None:
        pd = s.pids
        if pd.current is not None:
            fams.gauge(P + "pids_current", "Tasks (threads) now", LABELS).add_metric(lv, pd.current)
        if pd.max is not None and pd.max != UNLIMITED:
            fams.gauge(P + "pids_limit", "pids.max", LABELS).add_metric(lv, pd.max)
        if pd.peak is not None:
            fams.gauge(P + "pids_peak", "Highest task count", LABELS).add_metric(lv, pd.peak)
        if pd.events_max is not None:
            fams.counter(P + "pids_limit_hits_total", "Forks refused by pids.max",
                         LABELS).add_metric(lv, pd.events_max)
    if s.pressure is not None:
        for resource in ("cpu", "memory", "io", "irq"):
            _pressure(fams, lv, resource, getattr(s.pressure, resource))
    if s.frozen is not None:
        fams.gauge(P + "frozen", "1 when the cgroup is (effectively) frozen", LABELS).add_metric(
            lv, int(s.frozen))
    if s.populated is not None:
        fams.gauge(P + "populated", "1 when processes live in the subtree", LABELS).add_metric(
            lv, int(s.populated))


def snapshot_families(snapshot: Snapshot) -> list[Metric]:
    """All workload and agent families for one snapshot."""
    fams = Families()
    for w in snapshot.workloads.values():
        _workload(fams, w)
    out = list(fams)
    out.extend(agent_families(snapshot))
    return out


def agent_families(snapshot: Snapshot) -> list[Metric]:
    up = GaugeMetricFamily(P + "up", "1 while the agent publishes snapshots")
    up.add_metric([], 1)
    info = GaugeMetricFamily(P + "build_info", "Agent version and host facts",
                             labels=["version", "cgroup_layout", "kernel", "hostname"])
    h = snapshot.host
    info.add_metric([h.agent_version, h.cgroup_layout, h.kernel, label_value(h.hostname)], 1)
    count = GaugeMetricFamily(P + "workloads", "Tracked workloads by kind", labels=["kind"])
    kinds: dict[str, int] = {}
    for w in snapshot.workloads.values():
        kinds[w.identity.kind.value] = kinds.get(w.identity.kind.value, 0) + 1
    for k, n in sorted(kinds.items()):
        count.add_metric([k], n)
    cycle = GaugeMetricFamily(P + "cycle_cpu_seconds", "CPU time the last collection cycle cost")
    cycle.add_metric([], snapshot.cycle_cpu_ns / 1e9)
    ts = GaugeMetricFamily(P + "snapshot_timestamp_seconds", "When the snapshot was taken")
    ts.add_metric([], snapshot.wall_ns / 1e9)
    seq = CounterMetricFamily(P + "cycles", "Collection cycles completed")
    seq.add_metric([], snapshot.seq)
    return [up, info, count, cycle, ts, seq]
