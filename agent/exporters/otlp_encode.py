"""A Snapshot as OTLP metrics (opentelemetry-proto messages), one ResourceMetrics per workload.

Names, units and attributes follow the OpenTelemetry semantic conventions for containers
(container.cpu.time, container.memory.usage, ...); what the conventions lack (PSI, pids,
throttling, limits) is under `container_agent.*`. Counters are cumulative monotonic Sums whose
start_time_unix_nano is fixed per cgroup incarnation (the caller keeps it stable); memory
amounts are non-monotonic Sums (UpDownCounters); rates and uptime are Gauges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
)

from agent import __version__
from agent.exporters.remote_write_codec import varint
from agent.model.snapshot import Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from agent.network.component import NetworkSnapshot
from collectors.samples import UNLIMITED, IoDeviceSample

SCOPE_NAME = "container-agent"

#: Label keys (OCI/CRI annotations, runtime labels) that name a container's image.
IMAGE_LABELS = ("image", "io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName",
                "org.opencontainers.image.ref.name")
K8S_CONTAINER_LABELS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")

COUNTER, UPDOWN, GAUGE = "counter", "updown", "gauge"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    unit: str
    description: str
    kind: str  # COUNTER, UPDOWN or GAUGE
    double: bool = False

    def template(self) -> Metric:
        m = Metric(name=self.name, unit=self.unit, description=self.description)
        if self.kind == GAUGE:
            m.gauge.SetInParent()
        else:
            m.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
            m.sum.is_monotonic = self.kind == COUNTER
        return m


# Semantic conventions (container.*).
UPTIME = MetricDef("container.uptime", "s", "The time the container has been running.", GAUGE,
                   True)
CPU_TIME = MetricDef("container.cpu.time", "s", "Total CPU time consumed.", COUNTER, True)
CPU_USAGE = MetricDef("container.cpu.usage", "{cpu}",
                      "CPU usage in cpus, averaged over the collection interval.", GAUGE, True)
MEM_USAGE = MetricDef("container.memory.usage", "By", "Memory charged (memory.current).",
                      UPDOWN)
MEM_WORKING_SET = MetricDef("container.memory.working_set", "By",
                            "Memory usage minus inactive file cache.", UPDOWN)
MEM_RSS = MetricDef("container.memory.rss", "By", "Anonymous memory (memory.stat anon).", UPDOWN)
MEM_AVAILABLE = MetricDef("container.memory.available", "By",
                          "Memory limit minus working set (only with a limit).", UPDOWN)
PAGING_FAULTS = MetricDef("container.paging.faults", "{fault}", "Memory paging faults.", COUNTER)
DISK_IO = MetricDef("container.disk.io", "By", "Disk bytes read and written.", COUNTER)
NETWORK_IO = MetricDef("container.network.io", "By",
                       "Network bytes per interface (counted on the namespace's owner).", COUNTER)
# What the conventions lack.
CPU_THROTTLED = MetricDef("container_agent.cpu.throttled.time", "s",
                          "Time throttled by the workload's own CPU limit.", COUNTER, True)
CPU_THROTTLED_PERIODS = MetricDef("container_agent.cpu.throttled.periods", "{period}",
                                  "Enforcement periods in which it was throttled.", COUNTER)
CPU_LIMIT = MetricDef("container_agent.cpu.limit", "{cpu}", "CPU limit (cpu.max) in cpus.", GAUGE,
                      True)
MEM_LIMIT = MetricDef("container_agent.memory.limit", "By", "Memory limit (memory.max).", UPDOWN)
MEM_PEAK = MetricDef("container_agent.memory.peak", "By", "Highest memory usage recorded.",
                     UPDOWN)
MEM_SWAP = MetricDef("container_agent.memory.swap.usage", "By", "Swap used.", UPDOWN)
OOM_KILLS = MetricDef("container_agent.memory.oom_kills", "{process}",
                      "Processes killed by the OOM killer (memory.events oom_kill).", COUNTER)
DISK_OPS = MetricDef("container_agent.disk.operations", "{operation}",
                     "Disk read and write operations.", COUNTER)
PIDS = MetricDef("container_agent.pids.current", "{task}", "Tasks in the cgroup.", UPDOWN)
PIDS_LIMIT = MetricDef("container_agent.pids.limit", "{task}", "pids.max.", UPDOWN)
PRESSURE = MetricDef("container_agent.pressure.stall.time", "s",
                     "Time stalled on a resource (PSI total).", COUNTER, True)
FROZEN = MetricDef("container_agent.frozen", "1", "1 when the cgroup is frozen.", GAUGE)

ALL_METRICS = (UPTIME, CPU_TIME, CPU_USAGE, MEM_USAGE, MEM_WORKING_SET, MEM_RSS, MEM_AVAILABLE,
               PAGING_FAULTS, DISK_IO, NETWORK_IO, CPU_THROTTLED, CPU_THROTTLED_PERIODS,
               CPU_LIMIT, MEM_LIMIT, MEM_PEAK, MEM_SWAP, OOM_KILLS, DISK_OPS, PIDS, PIDS_LIMIT,
               PRESSURE, FROZEN)

#: (attributes, value) of one data point.
Point = tuple[tuple[tuple[str, str], ...], float]
NO_ATTRS: tuple[tuple[str, str], ...] = ()


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=_text(value)))


def _text(value: str) -> str:
    """Protobuf strings must be UTF-8: undecodable cgroup-name bytes become \\xNN text."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: Data point attributes as (key, value) pairs; the builder turns each distinct set into a
#: template data point once (copying a template is ~3x cheaper than adding KeyValues).
Attrs = tuple[tuple[str, str], ...]
_USER, _SYSTEM = (("cpu.mode", "user"),), (("cpu.mode", "system"),)
_MINOR = (("system.paging.fault.type", "minor"),)
_MAJOR = (("system.paging.fault.type", "major"),)
_READ, _WRITE = ("disk.io.direction", "read"), ("disk.io.direction", "write")
_RECEIVE, _TRANSMIT = ("network.io.direction", "receive"), ("network.io.direction", "transmit")
_PSI = {(r, lvl): (("container_agent.pressure.resource", r),
                   ("container_agent.pressure.level", lvl))
        for r in ("cpu", "memory", "io", "irq") for lvl in ("some", "full")}


def first_label(labels: Mapping[str, str], keys: Sequence[str]) -> str | None:
    return next((labels[k] for k in keys if labels.get(k)), None)


def resource_attributes(ident: WorkloadIdentity, host_name: str,
                        extra: Mapping[str, str]) -> list[KeyValue]:
    """The workload's resource: container.* for containers, k8s.* inside pods, host.name, and
    the agent's own keys; configured extras never override these."""
    attrs: dict[str, str | int] = dict(extra)
    attrs["host.name"] = host_name
    if ident.kind is WorkloadKind.CONTAINER:
        attrs["container.id"] = ident.id
        attrs["container.name"] = ident.name
    else:
        attrs["container_agent.workload.id"] = ident.id
        attrs["container_agent.workload.name"] = ident.name
    optional = (
        ("container.runtime.name", ident.runtime if ident.kind is WorkloadKind.CONTAINER else ""),
        ("container.image.name", first_label(ident.labels, IMAGE_LABELS)),
        ("k8s.pod.name", ident.pod_name),
        ("k8s.pod.uid", ident.pod_uid),
        ("k8s.namespace.name", ident.namespace),
        ("k8s.container.name", first_label(ident.labels, K8S_CONTAINER_LABELS)),
    )
    attrs.update((k, v) for k, v in optional if v)
    attrs["container_agent.kind"] = ident.kind.value
    attrs["container_agent.cgroup"] = ident.cgroup
    attrs["container_agent.cgroup.inode"] = ident.inode
    return [kv(k, v) for k, v in attrs.items()]


def workload_points(
    w: WorkloadState, net: NetworkSnapshot | None, uptime_s: float | None
) -> Iterator[tuple[MetricDef, Sequence[Point]]]:
    """Every metric of one workload with its data points (metrics without data are left out)."""
    s = w.sample
    if uptime_s is not None:
        yield UPTIME, ((NO_ATTRS, uptime_s),)
    c = s.cpu
    if c is not None:
        if c.user_usec is not None and c.system_usec is not None:
            yield CPU_TIME, ((_USER, c.user_usec / 1e6), (_SYSTEM, c.system_usec / 1e6))
        elif c.usage_usec is not None:
            yield CPU_TIME, ((NO_ATTRS, c.usage_usec / 1e6),)
        if c.throttled_usec is not None:
            yield CPU_THROTTLED, ((NO_ATTRS, c.throttled_usec / 1e6),)
        if c.nr_throttled is not None:
            yield CPU_THROTTLED_PERIODS, ((NO_ATTRS, c.nr_throttled),)
        if c.max_quota_usec not in (None, UNLIMITED) and c.max_period_usec:
            yield CPU_LIMIT, ((NO_ATTRS, (c.max_quota_usec or 0) / c.max_period_usec),)
    if w.rates is not None and w.rates.cpu_cores is not None:
        yield CPU_USAGE, ((NO_ATTRS, w.rates.cpu_cores),)
    yield from _memory(w)
    if s.io:
        yield DISK_IO, _per_device(s.io, "rbytes", "wbytes")
        yield DISK_OPS, _per_device(s.io, "rios", "wios")
    if net is not None:
        points = _network(net, w.identity.id)
        if points:
            yield NETWORK_IO, points
    p = s.pids
    if p is not None and p.current is not None:
        yield PIDS, ((NO_ATTRS, p.current),)
        if p.max not in (None, UNLIMITED):
            yield PIDS_LIMIT, ((NO_ATTRS, p.max or 0),)
    psi = s.pressure
    if psi is not None:
        stalls: list[Point] = []
        for resource in ("cpu", "memory", "io", "irq"):
            r = getattr(psi, resource)
            if r is None:
                continue
            for level, line in (("some", r.some), ("full", r.full)):
                if line is not None:
                    stalls.append((_PSI[resource, level], line.total / 1e6))
        if stalls:
            yield PRESSURE, stalls
    if s.frozen is not None:
        yield FROZEN, ((NO_ATTRS, int(s.frozen)),)


def _memory(w: WorkloadState) -> Iterator[tuple[MetricDef, Sequence[Point]]]:
    m = w.sample.memory
    if m is None:
        return
    ws = m.working_set
    if m.current is not None:
        yield MEM_USAGE, ((NO_ATTRS, m.current),)
    if ws is not None:
        yield MEM_WORKING_SET, ((NO_ATTRS, ws),)
    if "anon" in m.stat:
        yield MEM_RSS, ((NO_ATTRS, m.stat["anon"]),)
    if m.max is not None and m.max != UNLIMITED:
        yield MEM_LIMIT, ((NO_ATTRS, m.max),)
        if ws is not None:
            yield MEM_AVAILABLE, ((NO_ATTRS, max(m.max - ws, 0)),)
    if m.peak is not None:
        yield MEM_PEAK, ((NO_ATTRS, m.peak),)
    if m.swap_current is not None:
        yield MEM_SWAP, ((NO_ATTRS, m.swap_current),)
    faults, major = m.stat.get("pgfault"), m.stat.get("pgmajfault")
    if faults is not None and major is not None:
        # pgfault counts both kinds: minor = all - major, so the points sum to the total.
        yield PAGING_FAULTS, ((_MINOR, max(faults - major, 0)), (_MAJOR, major))
    if "oom_kill" in m.events:
        yield OOM_KILLS, ((NO_ATTRS, m.events["oom_kill"]),)


def _per_device(devices: Sequence[IoDeviceSample], read: str, write: str) -> list[Point]:
    out: list[Point] = []
    for d in devices:
        dev = ("system.device", d.device)
        for attr, field in ((_READ, read), (_WRITE, write)):
            v = getattr(d, field)
            if v is not None:
                out.append(((attr, dev), v))
    return out


def _network(net: NetworkSnapshot, workload_id: str) -> list[Point]:
    """Interfaces of the workload's namespace, only on its owner (a shared namespace's traffic
    is counted once); loopback left out, as the per-workload totals do."""
    if workload_id not in net.totals_by_workload:
        return []
    ns = net.namespace_of(workload_id)
    if ns is None:
        return []
    out: list[Point] = []
    for i in ns.interfaces:
        if i.stats is None or i.loopback:
            continue
        name = ("network.interface.name", i.name)
        out.append(((_RECEIVE, name), i.stats.rx_bytes))
        out.append(((_TRANSMIT, name), i.stats.tx_bytes))
    return out


@dataclass(slots=True)
class _Cached:
    """One workload's messages kept between pushes: while its resource and the layout of its
    points (metrics, attributes) stay the same, a push only assigns values and timestamps."""

    resource: ResourceMetrics  # the prototype it was built from (identity = unchanged)
    layout: list[tuple[MetricDef, tuple[Attrs, ...]]]
    rm: ResourceMetrics
    int_points: list[NumberDataPoint]
    double_points: list[NumberDataPoint]
    start_ns: int
    points: int


class RequestBuilder:
    """Builds each workload's ResourceMetrics once and keeps it while it lives: later pushes
    assign new values in place (no message construction or template copies). Metric and data
    point templates are made once and copied."""

    def __init__(self, max_cached: int = 20_000) -> None:
        self._templates = {d.name: d.template() for d in ALL_METRICS}
        self._points: dict[Attrs, NumberDataPoint] = {}
        self._max = max_cached
        self._workloads: dict[str, _Cached] = {}

    def _point_template(self, attrs: Attrs) -> NumberDataPoint:
        dp = self._points.get(attrs)
        if dp is None:
            if len(self._points) >= self._max:  # bounded by what is live (devices, links)
                self._points.clear()
            dp = self._points[attrs] = NumberDataPoint(attributes=[kv(k, v) for k, v in attrs])
        return dp

    def retain(self, live: Iterable[str]) -> None:
        """Drop the messages of workloads that are gone."""
        keep = set(live)
        for wid in [w for w in self._workloads if w not in keep]:
            del self._workloads[wid]

    def workload_metrics(
        self,
        wid: str,
        resource: ResourceMetrics,
        w: WorkloadState,
        start_ns: int,
        now_ns: int,
        net: NetworkSnapshot | None,
        uptime_s: float | None,
    ) -> tuple[ResourceMetrics, int]:
        """The workload's ResourceMetrics (kept by the builder: do not change it) for this
        push, and its number of data points."""
        layout: list[tuple[MetricDef, tuple[Attrs, ...]]] = []
        ints: list[float] = []
        doubles: list[float] = []
        for d, points in workload_points(w, net, uptime_s):
            layout.append((d, tuple([a for a, _ in points])))
            (doubles if d.double else ints).extend([v for _, v in points])
        c = self._workloads.get(wid)
        if c is None or c.resource is not resource or c.layout != layout:
            c = self._workloads[wid] = self._build(resource, layout, start_ns)
        if c.start_ns != start_ns:
            for dp in c.int_points + c.double_points:
                dp.start_time_unix_nano = start_ns
            c.start_ns = start_ns
        for dp, value in zip(c.int_points, ints, strict=True):
            dp.time_unix_nano = now_ns
            dp.as_int = value  # type: ignore[assignment]  # int by construction
        for dp, value in zip(c.double_points, doubles, strict=True):
            dp.time_unix_nano = now_ns
            dp.as_double = value
        return c.rm, c.points

    def _build(
        self,
        resource: ResourceMetrics,
        layout: list[tuple[MetricDef, tuple[Attrs, ...]]],
        start_ns: int,
    ) -> _Cached:
        rm = ResourceMetrics()
        rm.CopyFrom(resource)
        metrics = rm.scope_metrics[0].metrics
        templates = self._templates
        int_points: list[NumberDataPoint] = []
        double_points: list[NumberDataPoint] = []
        for d, attrs_of in layout:
            m = metrics.add()
            m.CopyFrom(templates[d.name])
            dps = m.gauge.data_points if d.kind == GAUGE else m.sum.data_points
            for attrs in attrs_of:
                dp = dps.add()
                if attrs:
                    dp.CopyFrom(self._point_template(attrs))
                dp.start_time_unix_nano = start_ns
                (double_points if d.double else int_points).append(dp)
        return _Cached(resource, layout, rm, int_points, double_points, start_ns,
                       len(int_points) + len(double_points))


def resource_prototype(attributes: Sequence[KeyValue]) -> ResourceMetrics:
    """A workload's ResourceMetrics without metrics: its resource and our scope, copied whole
    into each push (one C-level copy instead of one call per attribute)."""
    rm = ResourceMetrics()
    rm.resource.attributes.extend(attributes)
    scope = rm.scope_metrics.add()
    scope.scope.name = SCOPE_NAME
    scope.scope.version = __version__
    return rm


#: ExportMetricsServiceRequest.resource_metrics: field 1, length-delimited (wire type 2).
_RESOURCE_METRICS_TAG = b"\x0a"


def request_body(resource_metrics: Sequence[bytes]) -> bytes:
    """A serialized ExportMetricsServiceRequest from serialized ResourceMetrics: the bytes
    SerializeToString() gives for the same message, without copying each kept ResourceMetrics
    into a request first (that copy cost more than building the messages)."""
    return b"".join([part for rm in resource_metrics
                     for part in (_RESOURCE_METRICS_TAG, varint(len(rm)), rm)])


def build_requests(
    snapshot: Snapshot,
    builder: RequestBuilder,
    start_of: Mapping[str, int],
    uptime_start_of: Mapping[str, int],
    resources: Mapping[str, ResourceMetrics],
    max_points: int,
) -> list[tuple[bytes, int]]:
    """(serialized ExportMetricsServiceRequest, data points) pairs, each request holding whole
    workloads and, unless one workload alone exceeds it, at most max_points points. `start_of`
    gives each workload's counter start time, `uptime_start_of` when it started (where known),
    `resources` its resource_prototype()."""
    net = snapshot.extras.get("network")
    network = net if isinstance(net, NetworkSnapshot) else None
    now = snapshot.wall_ns
    out: list[tuple[bytes, int]] = []
    req: list[bytes] = []
    points = 0
    for wid, w in snapshot.workloads.items():
        resource = resources.get(wid)
        if resource is None:
            continue
        # Each point is stamped with when its cgroup was read, not when the cycle began.
        read_ns = w.sample.wall_ns or now
        started = uptime_start_of.get(wid)
        uptime = (read_ns - started) / 1e9 if started is not None and started <= read_ns else None
        rm, n = builder.workload_metrics(wid, resource, w, min(start_of.get(wid, now), read_ns),
                                         read_ns, network, uptime)
        if points and points + n > max_points:
            # Start a new request: whole resources per request.
            out.append((request_body(req), points))
            req, points = [], 0
        req.append(rm.SerializeToString())
        points += n
    if points:
        out.append((request_body(req), points))
    builder.retain(snapshot.workloads)
    return out
