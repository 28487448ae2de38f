"""cAdvisor's metric names and labels for the metrics we share, so existing dashboards work.

Labels as the kubelet's /metrics/cadvisor: id (cgroup path), name, image, container, pod,
namespace. Values follow cAdvisor's conventions (spec limits 0 when unlimited; CFS metrics only
where a quota is set; PSI `waiting` = some, `stalled` = full). Declared as a spec table, so the
scrape path renders it like the agent's own metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

from agent.exporters.metrics import (
    RenderedFamily,
    Spec,
    Values,
    families_from_specs,
    label_value,
    render_specs,
)
from agent.exporters.render_rows import RowCache
from agent.model.snapshot import Snapshot, WorkloadKind, WorkloadState
from collectors.samples import UNLIMITED, CgroupSample, CpuSample, MemorySample

LABELS = ["id", "name", "image", "container", "pod", "namespace"]
#: Runtime label keys exported as container_label_<key> (an allowlist: bounded cardinality);
#: set from [identity] cadvisor_labels.
_label_keys: tuple[str, ...] = ()
_label_names: list[str] = list(LABELS)


def set_label_keys(keys: Iterable[str]) -> None:
    global _label_keys, _label_names
    _label_keys = tuple(dict.fromkeys(keys))
    _label_names = [*LABELS, *(_label_name(k) for k in _label_keys)]


def _label_name(key: str) -> str:
    # As cAdvisor: every character a Prometheus label name cannot hold becomes "_".
    return "container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def cadvisor_labels(w: WorkloadState) -> list[str]:
    i = w.identity
    container = (i.container_name or i.name) if i.kind is WorkloadKind.CONTAINER else ""
    return [
        label_value(i.cgroup), label_value(i.name), label_value(i.image),
        label_value(container), label_value(i.pod_name), label_value(i.namespace),
    ]


def _labels_with_runtime_labels(w: WorkloadState) -> list[str]:
    labels = w.identity.labels
    return [*cadvisor_labels(w), *(label_value(labels.get(k, "")) for k in _label_keys)]


def _has_quota(c: CpuSample) -> bool:
    return c.max_quota_usec is not None and c.max_quota_usec != UNLIMITED


def _value(get: Callable[[CgroupSample], float | None]) -> Callable[[WorkloadState], Values]:
    def values(w: WorkloadState) -> Values:
        v = get(w.sample)
        return () if v is None else (((), v),)
    return values


def _cpu(get: Callable[[CpuSample], float | None], quota_only: bool = False) -> Callable[
    [WorkloadState], Values
]:
    def one(s: CgroupSample) -> float | None:
        c = s.cpu
        if c is None or (quota_only and not _has_quota(c)):
            return None
        return get(c)
    return _value(one)


def _mem(get: Callable[[MemorySample], float | None]) -> Callable[[WorkloadState], Values]:
    return _value(lambda s: get(s.memory) if s.memory is not None else None)


def _usec(v: int | None) -> float | None:
    return None if v is None else v / 1e6


def _shares(c: CpuSample) -> float | None:
    # cAdvisor converts weight back to shares: 2 + ((weight - 1) * 262142) / 9999.
    return None if c.weight is None else 2 + ((c.weight - 1) * 262142) // 9999


def _limit(v: int | None) -> int:
    return 0 if v in (None, UNLIMITED) else int(v or 0)


def _failures(w: WorkloadState) -> Values:
    m = w.sample.memory
    if m is None:
        return ()
    return [((key, "container"), m.stat[key]) for key in ("pgfault", "pgmajfault")
            if key in m.stat]


def _fs(field: str) -> Callable[[WorkloadState], Values]:
    def values(w: WorkloadState) -> Values:
        io = w.sample.io or ()
        return [((label_value(d.device),), getattr(d, field)) for d in io
                if getattr(d, field) is not None]
    return values


def _psi(resource: str, level: str) -> Callable[[WorkloadState], Values]:
    def get(s: CgroupSample) -> float | None:
        p = getattr(s.pressure, resource, None) if s.pressure is not None else None
        line = getattr(p, level, None) if p is not None else None
        return None if line is None else line.total / 1e6
    return _value(get)


def _cpu_total(w: WorkloadState) -> Values:
    c = w.sample.cpu
    if c is None or c.usage_usec is None:
        return ()
    return ((("total",), c.usage_usec / 1e6),)


def _threads_max(s: CgroupSample) -> float | None:
    if s.pids is None or s.pids.max in (None, UNLIMITED):
        return None
    return s.pids.max


CADVISOR_SPECS: tuple[Spec, ...] = (
    Spec("container_last_seen", "gauge", "Last time the container was seen",
         _value(lambda s: s.wall_ns / 1e9), volatile=True),
    Spec("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed",
         _cpu_total, ("cpu",)),
    Spec("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time",
         _cpu(lambda c: _usec(c.user_usec))),
    Spec("container_cpu_system_seconds_total", "counter", "Cumulative system cpu time",
         _cpu(lambda c: _usec(c.system_usec))),
    Spec("container_cpu_cfs_periods_total", "counter", "Elapsed enforcement periods",
         _cpu(lambda c: c.nr_periods, quota_only=True)),
    Spec("container_cpu_cfs_throttled_periods_total", "counter", "Throttled periods",
         _cpu(lambda c: c.nr_throttled, quota_only=True)),
    Spec("container_cpu_cfs_throttled_seconds_total", "counter", "Total time throttled",
         _cpu(lambda c: _usec(c.throttled_usec), quota_only=True)),
    Spec("container_spec_cpu_period", "gauge", "CPU period", _cpu(lambda c: c.max_period_usec)),
    Spec("container_spec_cpu_quota", "gauge", "CPU quota",
         _cpu(lambda c: c.max_quota_usec, quota_only=True)),
    Spec("container_spec_cpu_shares", "gauge", "CPU share", _cpu(_shares)),
    Spec("container_memory_usage_bytes", "gauge", "Current memory usage",
         _mem(lambda m: m.current)),
    Spec("container_memory_working_set_bytes", "gauge", "Current working set",
         _mem(lambda m: m.working_set)),
    Spec("container_memory_max_usage_bytes", "gauge", "Maximum memory usage recorded",
         _mem(lambda m: m.peak)),
    Spec("container_memory_rss", "gauge", "Size of RSS", _mem(lambda m: m.stat.get("anon"))),
    Spec("container_memory_cache", "gauge", "Page cache", _mem(lambda m: m.stat.get("file"))),
    Spec("container_memory_mapped_file", "gauge", "Size of memory mapped files",
         _mem(lambda m: m.stat.get("file_mapped"))),
    Spec("container_memory_swap", "gauge", "Container swap usage",
         _mem(lambda m: m.swap_current)),
    Spec("container_memory_total_active_file_bytes", "gauge", "Active file cache",
         _mem(lambda m: m.stat.get("active_file"))),
    Spec("container_memory_total_inactive_file_bytes", "gauge", "Inactive file cache",
         _mem(lambda m: m.stat.get("inactive_file"))),
    Spec("container_memory_failcnt", "counter", "Memory limit hits", _mem(lambda m: m.failcnt)),
    Spec("container_memory_failures_total", "counter", "Memory page faults", _failures,
         ("failure_type", "scope")),
    Spec("container_oom_events_total", "counter", "Count of OOM kills",
         _mem(lambda m: m.events.get("oom_kill"))),
    Spec("container_spec_memory_limit_bytes", "gauge", "Memory limit",
         _mem(lambda m: _limit(m.max))),
    Spec("container_spec_memory_swap_limit_bytes", "gauge", "Swap limit",
         _mem(lambda m: _limit(m.swap_max))),
    Spec("container_fs_reads_bytes_total", "counter", "Bytes read", _fs("rbytes"), ("device",)),
    Spec("container_fs_writes_bytes_total", "counter", "Bytes written", _fs("wbytes"),
         ("device",)),
    Spec("container_fs_reads_total", "counter", "Reads completed", _fs("rios"), ("device",)),
    Spec("container_fs_writes_total", "counter", "Writes completed", _fs("wios"), ("device",)),
    Spec("container_threads", "gauge", "Number of threads",
         _value(lambda s: s.pids.current if s.pids is not None else None)),
    Spec("container_threads_max", "gauge", "Maximum number of threads", _value(_threads_max)),
    Spec("container_pressure_cpu_waiting_seconds_total", "counter",
         "Time tasks waited for CPU (PSI some)", _psi("cpu", "some")),
    Spec("container_pressure_cpu_stalled_seconds_total", "counter",
         "Time no task could run for want of CPU (PSI full)", _psi("cpu", "full")),
    Spec("container_pressure_memory_waiting_seconds_total", "counter",
         "Time tasks waited for memory (PSI some)", _psi("memory", "some")),
    Spec("container_pressure_memory_stalled_seconds_total", "counter",
         "Time no task could run for want of memory (PSI full)", _psi("memory", "full")),
    Spec("container_pressure_io_waiting_seconds_total", "counter",
         "Time tasks waited for IO (PSI some)", _psi("io", "some")),
    Spec("container_pressure_io_stalled_seconds_total", "counter",
         "Time no task could run for want of IO (PSI full)", _psi("io", "full")),
)


def cadvisor_render(snapshot: Snapshot, cache: RowCache | None = None) -> list[RenderedFamily]:
    """The cAdvisor families as exposition lines (the scrape path; `cache`: see
    agent.exporters.render_rows)."""
    return render_specs(snapshot.workloads.values(), CADVISOR_SPECS, _label_names,
                        _labels_with_runtime_labels, cache)


def cadvisor_families(snapshot: Snapshot) -> list[Metric]:
    """The cAdvisor families as Metric objects (remote write)."""
    return families_from_specs(snapshot.workloads.values(), CADVISOR_SPECS, _label_names,
                               _labels_with_runtime_labels)
