"""cAdvisor's metric names and labels for the metrics we share, so existing dashboards work.

Labels as the kubelet's /metrics/cadvisor: id (cgroup path), name, image, container, pod,
namespace. Values follow cAdvisor's conventions (e.g. spec limits 0 when unlimited; CFS
metrics only where a quota is set; PSI `waiting` = some, `stalled` = full).
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from agent.metrics import Families, label_value
from agent.model import Snapshot, WorkloadKind, WorkloadState
from collectors.samples import UNLIMITED

LABELS = ["id", "name", "image", "container", "pod", "namespace"]


def cadvisor_labels(w: WorkloadState) -> list[str]:
    i = w.identity
    container = i.name if i.kind is WorkloadKind.CONTAINER else ""
    return [
        label_value(i.cgroup), label_value(i.name), i.labels.get("image", ""),
        label_value(container), label_value(i.pod_name), label_value(i.namespace),
    ]


def _one(f: Families, w: WorkloadState, wall_s: float) -> None:
    lv = cadvisor_labels(w)
    s = w.sample
    f.gauge("container_last_seen", "Last time the container was seen", LABELS).add_metric(
        lv, wall_s)
    c = s.cpu
    if c is not None:
        if c.usage_usec is not None:
            f.counter("container_cpu_usage_seconds_total", "Cumulative cpu time consumed",
                      [*LABELS, "cpu"]).add_metric([*lv, "total"], c.usage_usec / 1e6)
        if c.user_usec is not None:
            f.counter("container_cpu_user_seconds_total", "Cumulative user cpu time",
                      LABELS).add_metric(lv, c.user_usec / 1e6)
        if c.system_usec is not None:
            f.counter("container_cpu_system_seconds_total", "Cumulative system cpu time",
                      LABELS).add_metric(lv, c.system_usec / 1e6)
        has_quota = c.max_quota_usec is not None and c.max_quota_usec != UNLIMITED
        if has_quota:
            if c.nr_periods is not None:
                f.counter("container_cpu_cfs_periods_total", "Elapsed enforcement periods",
                          LABELS).add_metric(lv, c.nr_periods)
            if c.nr_throttled is not None:
                f.counter("container_cpu_cfs_throttled_periods_total", "Throttled periods",
                          LABELS).add_metric(lv, c.nr_throttled)
            if c.throttled_usec is not None:
                f.counter("container_cpu_cfs_throttled_seconds_total", "Total time throttled",
                          LABELS).add_metric(lv, c.throttled_usec / 1e6)
        if c.max_period_usec is not None:
            f.gauge("container_spec_cpu_period", "CPU period", LABELS).add_metric(
                lv, c.max_period_usec)
        if has_quota:
            f.gauge("container_spec_cpu_quota", "CPU quota", LABELS).add_metric(
                lv, c.max_quota_usec or 0)
        if c.weight is not None:
            # cAdvisor converts weight back to shares: 2 + ((weight - 1) * 262142) / 9999.
            f.gauge("container_spec_cpu_shares", "CPU share", LABELS).add_metric(
                lv, 2 + ((c.weight - 1) * 262142) // 9999)
    m = s.memory
    if m is not None:
        for name, value in (
            ("container_memory_usage_bytes", m.current),
            ("container_memory_working_set_bytes", m.working_set),
            ("container_memory_max_usage_bytes", m.peak),
            ("container_memory_rss", m.stat.get("anon")),
            ("container_memory_cache", m.stat.get("file")),
            ("container_memory_mapped_file", m.stat.get("file_mapped")),
            ("container_memory_swap", m.swap_current),
            ("container_memory_total_active_file_bytes", m.stat.get("active_file")),
            ("container_memory_total_inactive_file_bytes", m.stat.get("inactive_file")),
        ):
            if value is not None:
                f.gauge(name, name[10:].replace("_", " "), LABELS).add_metric(lv, value)
        if m.failcnt is not None:
            f.counter("container_memory_failcnt", "Memory limit hits", LABELS).add_metric(
                lv, m.failcnt)
        fail = f.counter("container_memory_failures_total", "Memory page faults",
                         [*LABELS, "failure_type", "scope"])
        for key in ("pgfault", "pgmajfault"):
            v = m.stat.get(key)
            if v is not None:
                fail.add_metric([*lv, key, "container"], v)
        if "oom_kill" in m.events:
            f.counter("container_oom_events_total", "Count of OOM kills", LABELS).add_metric(
                lv, m.events["oom_kill"])
        limit = 0 if m.max in (None, UNLIMITED) else m.max
        f.gauge("container_spec_memory_limit_bytes", "Memory limit", LABELS).add_metric(
            lv, limit or 0)
        swap_limit = 0 if m.swap_max in (None, UNLIMITED) else m.swap_max
        f.gauge("container_spec_memory_swap_limit_bytes", "Swap limit", LABELS).add_metric(
            lv, swap_limit or 0)
    if s.io is not None:
        for d in s.io:
            dl = [*lv, label_value(d.device)]
            for name, value in (
                ("container_fs_reads_bytes_total", d.rbytes),
                ("container_fs_writes_bytes_total", d.wbytes),
                ("container_fs_reads_total", d.rios),
                ("container_fs_writes_total", d.wios),
            ):
                if value is not None:
                    f.counter(name, "Block IO per device", [*LABELS, "device"]).add_metric(
                        dl, value)
    if s.pids is not None:
        if s.pids.current is not None:
            f.gauge("container_threads", "Number of threads", LABELS).add_metric(
                lv, s.pids.current)
        if s.pids.max is not None and s.pids.max != UNLIMITED:
            f.gauge("container_threads_max", "Maximum threads", LABELS).add_metric(
                lv, s.pids.max)
    if s.pressure is not None:
        for resource in ("cpu", "memory", "io"):
            p = getattr(s.pressure, resource)
            if p is None:
                continue
            for kind, line in (("waiting", p.some), ("stalled", p.full)):
                if line is not None:
                    f.counter(f"container_pressure_{resource}_{kind}_seconds_total",
                              f"PSI {resource} {kind}", LABELS).add_metric(lv, line.total / 1e6)


def cadvisor_families(snapshot: Snapshot) -> list[Metric]:
    f = Families()
    wall_s = snapshot.wall_ns / 1e9
    for w in snapshot.workloads.values():
        _one(f, w, wall_s)
    return list(f)
