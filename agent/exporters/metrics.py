"""Prometheus metrics from a Snapshot (never from the kernel).

Names follow Prometheus conventions: base units, `_total` for counters, `_seconds`, `_bytes`.
Scrapes (MetricsOptions): the identity labels (name, runtime, kind, cgroup, pod, namespace,
image, container) are on container_agent_workload_info only, every other workload series
carries `id` alone (join on `id`), unless `metrics_identity_labels` repeats them on every
series; metric groups and plain cgroups can be left out. Remote write (snapshot_families)
keeps every label on every series.

Each metric is declared once in WORKLOAD_SPECS. Two consumers read that table:
`snapshot_families()` builds prometheus_client Metric objects (remote write, tests), and
`render_workload_families()` writes the exposition text directly: with 1,000 cgroups that is
~50,000 series, which Metric objects make slow and memory-hungry to render on every cycle.
The `cadvisor` option adds cAdvisor's names (cadvisor_compat.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.core.config import METRIC_GROUPS
from agent.exporters.render_rows import LabelsOf, RowCache
from agent.model.snapshot import Snapshot, WorkloadKind, WorkloadState
from collectors.samples import UNLIMITED, CgroupSample

LABELS = ["id", "name", "runtime", "kind", "cgroup", "pod", "namespace", "image", "container"]

MEMORY_STAT_BYTES = (
    "anon", "file", "kernel", "kernel_stack", "pagetables", "sock", "shmem", "file_mapped",
    "file_dirty", "file_writeback", "slab", "slab_reclaimable", "slab_unreclaimable",
    "active_file", "inactive_file", "active_anon", "inactive_anon",
)

#: (extra label values, value) pairs of one workload for one metric.
Values = Iterable[tuple[tuple[str, ...], float]]


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
        label_value(i.pod_name), label_value(i.namespace), label_value(i.image),
        label_value(i.container_name),
    ]


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    type: str  # "counter" or "gauge"
    help: str
    values: Callable[[WorkloadState], Values]
    extra: tuple[str, ...] = ()
    #: The metric group (MetricsOptions.groups) it belongs to; "" for the cAdvisor table.
    group: str = ""
    #: Its value depends on the read's time, not only on the values read: rendered anew
    #: even for a workload whose values did not change (render_rows).
    volatile: bool = False


def _one(get: Callable[[CgroupSample], float | None], scale: float = 1.0) -> Callable[
    [WorkloadState], Values
]:
    def values(w: WorkloadState) -> Values:
        v = get(w.sample)
        return () if v is None else (((), v / scale if scale != 1.0 else v),)
    return values


def _cpu(field: str, scale: float = 1.0) -> Callable[[WorkloadState], Values]:
    return _one(lambda s: getattr(s.cpu, field) if s.cpu is not None else None, scale)


def _mem(get: Callable[[CgroupSample], float | None]) -> Callable[[WorkloadState], Values]:
    return _one(lambda s: get(s) if s.memory is not None else None)


def _quota(w: WorkloadState) -> Values:
    c = w.sample.cpu
    if c is None or c.max_quota_usec in (None, UNLIMITED) or not c.max_period_usec:
        return ()
    return (((), (c.max_quota_usec or 0) / c.max_period_usec),)


def _limits(w: WorkloadState) -> Values:
    m = w.sample.memory
    if m is None:
        return ()
    pairs = (("max", m.max), ("high", m.high), ("low", m.low), ("min", m.min),
             ("swap_max", m.swap_max))
    return [((k, ), v) for k, v in pairs if v is not None and v != UNLIMITED]


def _stat(keys: tuple[tuple[str, str], ...]) -> Callable[[WorkloadState], Values]:
    def values(w: WorkloadState) -> Values:
        m = w.sample.memory
        if m is None:
            return ()
        return [((label,), m.stat[key]) for key, label in keys if key in m.stat]
    return values


def _events(w: WorkloadState) -> Values:
    m = w.sample.memory
    return [] if m is None else [((k,), v) for k, v in sorted(m.events.items())]


def _io(field: str) -> Callable[[WorkloadState], Values]:
    def values(w: WorkloadState) -> Values:
        if w.sample.io is None:
            return ()
        out = []
        for d in w.sample.io:
            v = getattr(d, field)
            if v is not None:
                out.append(((label_value(d.device),), v))
        return out
    return values


def _pids(field: str, skip_unlimited: bool = False) -> Callable[[WorkloadState], Values]:
    def get(s: CgroupSample) -> float | None:
        if s.pids is None:
            return None
        v = getattr(s.pids, field)
        return None if skip_unlimited and v == UNLIMITED else v
    return _one(get)


def _psi(w: WorkloadState) -> Values:
    p = w.sample.pressure
    if p is None:
        return ()
    out = []
    for resource in ("cpu", "memory", "io", "irq"):
        r = getattr(p, resource)
        if r is None:
            continue
        # `level` (some/full), not `kind`: `kind` is already the workload kind label.
        for level, line in (("some", r.some), ("full", r.full)):
            if line is not None:
                out.append(((resource, level), line.total / 1e6))
    return out


def _flag(field: str) -> Callable[[WorkloadState], Values]:
    return _one(lambda s: None if getattr(s, field) is None else int(getattr(s, field)))


def _info(w: WorkloadState) -> Values:
    return (((str(w.identity.inode), str(w.identity.init_pid or "")), 1),)


WORKLOAD_SPECS: tuple[Spec, ...] = (
    Spec("container_agent_workload_info",
         "gauge", "Identity of a tracked workload (always 1)", _info,
         ("inode", "init_pid"), group="info"),
    Spec("container_agent_cpu_usage_seconds_total",
         "counter", "CPU time consumed", _cpu("usage_usec", 1e6),
         group="cpu"),
    Spec("container_agent_cpu_user_seconds_total", "counter", "CPU time in user mode",
         _cpu("user_usec", 1e6), group="cpu"),
    Spec("container_agent_cpu_system_seconds_total", "counter", "CPU time in kernel mode",
         _cpu("system_usec", 1e6), group="cpu"),
    Spec("container_agent_cpu_throttled_seconds_total",
         "counter", "Time throttled by its own CPU limit",
         _cpu("throttled_usec", 1e6), group="cpu_throttling"),
    Spec("container_agent_cpu_burst_seconds_total", "counter", "Time run in burst above quota",
         _cpu("burst_usec", 1e6), group="cpu_throttling"),
    Spec("container_agent_cpu_periods_total",
         "counter", "Enforcement periods elapsed", _cpu("nr_periods"),
         group="cpu_throttling"),
    Spec("container_agent_cpu_throttled_periods_total",
         "counter", "Periods in which it was throttled",
         _cpu("nr_throttled"), group="cpu_throttling"),
    Spec("container_agent_cpu_bursts_total",
         "counter", "Periods in which it used burst", _cpu("nr_bursts"),
         group="cpu_throttling"),
    Spec("container_agent_cpu_quota_cores",
         "gauge", "CPU limit (cpu.max) in cores", _quota, group="cpu"),
    Spec("container_agent_cpu_weight",
         "gauge", "cpu.weight (1-10000)", _cpu("weight"), group="cpu"),
    Spec("container_agent_memory_usage_bytes", "gauge", "Memory charged (memory.current)",
         _mem(lambda s: s.memory.current if s.memory else None), group="memory"),
    Spec("container_agent_memory_working_set_bytes", "gauge", "Usage minus inactive file cache",
         _mem(lambda s: s.memory.working_set if s.memory else None), group="memory"),
    Spec("container_agent_memory_peak_bytes", "gauge", "Highest usage recorded",
         _mem(lambda s: s.memory.peak if s.memory else None), group="memory"),
    Spec("container_agent_memory_swap_bytes", "gauge", "Swap used",
         _mem(lambda s: s.memory.swap_current if s.memory else None), group="memory"),
    Spec("container_agent_memory_limit_bytes",
         "gauge", "Memory limits; absent when unlimited", _limits,
         ("limit",), group="memory"),
    Spec("container_agent_memory_stat_bytes", "gauge", "memory.stat amounts",
         _stat(tuple((k, k) for k in MEMORY_STAT_BYTES)), ("stat",), group="memory_stat"),
    Spec("container_agent_memory_faults_total",
         "counter", "Page faults (memory.stat pgfault, pgmajfault)",
         _stat((("pgfault", "minor"), ("pgmajfault", "major"))), ("type",), group="memory_stat"),
    Spec("container_agent_memory_workingset_refaults_total", "counter", "Refaults of evicted pages",
         _stat((("workingset_refault_anon", "anon"), ("workingset_refault_file", "file"))),
         ("type",), group="memory_stat"),
    Spec("container_agent_memory_events_total",
         "counter", "memory.events counters", _events, ("event",),
         group="memory"),
    Spec("container_agent_io_read_bytes_total", "counter", "Bytes read per device", _io("rbytes"),
         ("device",), group="io"),
    Spec("container_agent_io_write_bytes_total",
         "counter", "Bytes written per device", _io("wbytes"),
         ("device",), group="io"),
    Spec("container_agent_io_reads_total",
         "counter", "Read operations per device", _io("rios"), ("device",),
         group="io"),
    Spec("container_agent_io_writes_total", "counter", "Write operations per device", _io("wios"),
         ("device",), group="io"),
    Spec("container_agent_io_discard_bytes_total",
         "counter", "Bytes discarded per device", _io("dbytes"),
         ("device",), group="io"),
    Spec("container_agent_io_discards_total",
         "counter", "Discard operations per device", _io("dios"),
         ("device",), group="io"),
    Spec("container_agent_pids_current",
         "gauge", "Tasks (threads) now", _pids("current"), group="pids"),
    Spec("container_agent_pids_limit",
         "gauge", "pids.max; absent when unlimited", _pids("max", True),
         group="pids"),
    Spec("container_agent_pids_peak", "gauge", "Highest task count", _pids("peak"), group="pids"),
    Spec("container_agent_pids_limit_hits_total", "counter", "Forks refused by pids.max",
         _pids("events_max"), group="pids"),
    Spec("container_agent_pressure_stalled_seconds_total", "counter",
         "PSI: cumulative time some (or all) tasks stalled on the resource", _psi,
         ("resource", "level"), group="pressure"),
    Spec("container_agent_frozen",
         "gauge", "1 when the cgroup is (effectively) frozen", _flag("frozen"),
         group="state"),
    Spec("container_agent_populated",
         "gauge", "1 when processes live in the subtree", _flag("populated"),
         group="state"),
)


class Families:
    """Lazily created Metric families, kept in first-use order."""

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


def families_from_specs(
    workloads: Iterable[WorkloadState], specs: Iterable[Spec], names: list[str],
    labels_of: LabelsOf,
) -> list[Metric]:
    """Metric objects for a spec table (remote write and tests; scrapes use render_specs)."""
    fams = Families()
    ws = list(workloads)
    labels = [labels_of(w) for w in ws]
    for spec in specs:
        make = fams.counter if spec.type == "counter" else fams.gauge
        fam: Metric | None = None
        for w, lv in zip(ws, labels, strict=True):
            for extra, value in spec.values(w):
                if fam is None:
                    fam = make(spec.name, spec.help, [*names, *spec.extra])
                fam.add_metric([*lv, *extra], value)  # type: ignore[attr-defined]
    return list(fams)


def snapshot_families(snapshot: Snapshot) -> list[Metric]:
    """All workload and agent families for one snapshot, as Metric objects."""
    workloads = snapshot.workloads.values()
    return [*families_from_specs(workloads, WORKLOAD_SPECS, LABELS, workload_labels),
            *agent_families(snapshot)]


@dataclass(frozen=True, slots=True)
class RenderedFamily:
    """One family's sample lines, with its header for each format (rendered once for both).
    The lines are kept as the workloads' pieces (the row cache's bytes, shared) and joined
    per scrape: a rendering then holds no second copy of the body between scrapes."""

    text_header: bytes
    om_header: bytes
    pieces: tuple[bytes, ...]

    @property
    def lines(self) -> bytes:
        return b"".join(self.pieces)


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    """What a scrape exports of the workloads (config keys metrics_*)."""

    #: Repeat the identity labels on every series (else only on workload_info).
    identity_labels: bool = False
    groups: frozenset[str] = frozenset(METRIC_GROUPS)
    #: Export plain cgroups (containers and services always).
    plain_cgroups: bool = True


DEFAULT_OPTIONS = MetricsOptions()


def _id_label(w: WorkloadState) -> list[str]:
    return [label_value(w.identity.id)]


def render_workload_families(
    snapshot: Snapshot, options: MetricsOptions = DEFAULT_OPTIONS,
    caches: WorkloadRowCaches | None = None,
) -> list[RenderedFamily]:
    """The workload metrics as exposition lines, straight from WORKLOAD_SPECS (`caches`: the
    rows of the last render, reused for workloads whose values did not change)."""
    workloads = [w for w in snapshot.workloads.values()
                 if options.plain_cgroups or w.identity.kind is not WorkloadKind.CGROUP]
    info, *rest = WORKLOAD_SPECS
    specs = [s for s in rest if s.group in options.groups]
    c = caches if caches is not None else WorkloadRowCaches()
    if options.identity_labels:
        return render_specs(workloads, [info, *specs], LABELS, workload_labels, c.info)
    return [*render_specs(workloads, [info], LABELS, workload_labels, c.info),
            *render_specs(workloads, specs, ["id"], _id_label, c.metrics)]


@dataclass(slots=True)
class WorkloadRowCaches:
    """The row caches of the workload tables (one per table: their rows differ)."""

    info: RowCache = field(default_factory=RowCache)
    metrics: RowCache = field(default_factory=RowCache)
    cadvisor: RowCache = field(default_factory=RowCache)


def render_specs(
    workloads: Iterable[WorkloadState], specs: Iterable[Spec], names: list[str],
    labels_of: LabelsOf, cache: RowCache | None = None,
) -> list[RenderedFamily]:
    """A spec table as exposition lines: each workload's row of lines comes from `cache`
    while its values are unchanged (see agent.exporters.render_rows); None renders all."""
    specs = list(specs)
    table = cache if cache is not None else RowCache()
    rows = table.rows(list(workloads), specs, names, labels_of)
    out: list[RenderedFamily] = []
    for i, spec in enumerate(specs):
        pieces = tuple(piece for row in rows if (piece := row[i]))
        if not pieces:
            continue
        # OpenMetrics names a counter family without its samples' `_total` suffix.
        om_family = spec.name
        if spec.type == "counter" and om_family.endswith("_total"):
            om_family = om_family[: -len("_total")]
        out.append(RenderedFamily(
            f"# HELP {spec.name} {spec.help}\n# TYPE {spec.name} {spec.type}\n".encode(),
            f"# HELP {om_family} {spec.help}\n# TYPE {om_family} {spec.type}\n".encode(),
            pieces,
        ))
    return out


def agent_families(snapshot: Snapshot) -> list[Metric]:
    up = GaugeMetricFamily("container_agent_up", "1 while the agent publishes snapshots")
    up.add_metric([], 1)
    info = GaugeMetricFamily("container_agent_build_info", "Agent version and host facts",
                             labels=["version", "cgroup_layout", "kernel", "hostname"])
    h = snapshot.host
    info.add_metric([h.agent_version, h.cgroup_layout, h.kernel, label_value(h.hostname)], 1)
    count = GaugeMetricFamily("container_agent_workloads",
                              "Tracked workloads by kind", labels=["kind"])
    kinds: dict[str, int] = {}
    for w in snapshot.workloads.values():
        kinds[w.identity.kind.value] = kinds.get(w.identity.kind.value, 0) + 1
    for k, n in sorted(kinds.items()):
        count.add_metric([k], n)
    cycle = GaugeMetricFamily("container_agent_cycle_cpu_seconds",
                              "CPU time the last collection cycle cost")
    cycle.add_metric([], snapshot.cycle_cpu_ns / 1e9)
    ts = GaugeMetricFamily("container_agent_snapshot_timestamp_seconds",
                           "When the snapshot was taken")
    ts.add_metric([], snapshot.wall_ns / 1e9)
    seq = CounterMetricFamily("container_agent_cycles_total", "Collection cycles completed")
    seq.add_metric([], snapshot.seq)
    return [up, info, count, cycle, ts, seq]
