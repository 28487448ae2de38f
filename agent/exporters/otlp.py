"""Push snapshots as OpenTelemetry metrics over OTLP/HTTP (protobuf) to `<endpoint>/v1/metrics`.

One ResourceMetrics per workload (agent/exporters/otlp_encode.py). The pipeline (bounded queue,
retries with backoff, dropped counter) is agent/exporters/push.py; OTLP/HTTP retries only 429,
502, 503, 504 and connection errors, and a 2xx answer may still reject points (partial
success): those count as dropped.

Each cgroup incarnation keeps one start time for its cumulative sums: the runtime's creation
time (runc state `created`) or its init process's start (psutil), else when the exporter first
saw it. The first two also give `container.uptime`. Both caches hold only live workloads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cramjam
import psutil
from prometheus_client.metrics_core import Metric

from agent import __version__
from agent.core.component import Setting
from agent.exporters.push import (
    Batch,
    PushComponent,
    PushMetricNames,
    http_url,
    not_negative,
    positive,
    string_table,
)
from agent.model.snapshot import Snapshot, WorkloadIdentity, WorkloadKind

if TYPE_CHECKING:  # the protobuf modules load only when an endpoint is set (~1.3 MiB RSS)
    from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

    from agent.exporters.otlp_encode import RequestBuilder

log = logging.getLogger("agent.otlp")

#: OTLP/HTTP: "429, 502, 503, 504 are retryable; all other 4xx and 5xx are not".
RETRYABLE = frozenset((429, 502, 503, 504))
KINDS = tuple(k.value for k in WorkloadKind)


def _kinds(v: Any) -> str | None:
    ok = isinstance(v, list) and all(k in KINDS for k in v)
    return None if ok else f"must be a list of {', '.join(KINDS)}"


def _compression(v: Any) -> str | None:
    return None if v in ("gzip", "none") else 'must be "gzip" or "none"'


def created_ns(ident: WorkloadIdentity) -> int | None:
    """The runtime's creation time (an RFC 3339 `created` label), in Unix ns."""
    text = ident.labels.get("created")
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        return None


def process_start_ns(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        return int(psutil.Process(pid).create_time() * 1e9)
    except (psutil.Error, OSError):
        return None


class OtlpComponent(PushComponent):
    name = "otlp"
    what = "points"
    metric_names = PushMetricNames(
        sent="container_agent_otlp_sent_points_total",
        sent_batches="container_agent_otlp_sent_requests_total",
        dropped="container_agent_otlp_dropped_points_total",
        failed_requests="container_agent_otlp_failed_requests_total",
        retried_requests="container_agent_otlp_retried_requests_total",
        queue_batches="container_agent_otlp_queue_requests",
        last_success="container_agent_otlp_last_success_timestamp_seconds",
    )
    settings = MappingProxyType(
        {
            "endpoint": Setting(
                str, "", "OTLP/HTTP base URL, e.g. http://collector:4318 (metrics go to "
                "<endpoint>/v1/metrics); empty = off", http_url
            ),
            "interval": Setting((int, float), 15.0, "seconds between pushes", positive),
            "headers": Setting(dict, {}, "extra HTTP headers (e.g. authorization)", string_table),
            "timeout": Setting((int, float), 10.0, "seconds per HTTP request", positive),
            "resource_attributes": Setting(
                dict, {}, "extra resource attributes on every workload", string_table
            ),
            "queue_size": Setting(int, 100, "requests held while the receiver is away",
                                  positive),
            "retries": Setting(int, 5, "retries of one request on 429/502/503/504/connection "
                               "errors", not_negative),
            "backoff": Setting(
                (int, float), 0.5, "first retry delay, doubled per retry (max 30 s)", positive
            ),
            "max_points_per_request": Setting(int, 10_000, "data points per request", positive),
            "compression": Setting(str, "gzip", '"gzip" or "none"', _compression),
            "kinds": Setting(list, list(KINDS), "workload kinds exported", _kinds),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.extra_headers: dict[str, str] = {}
        self.resource_extra: dict[str, str] = {}
        self.max_points = 10_000
        self.gzip = True
        self.kinds: frozenset[str] = frozenset(KINDS)
        self.rejected_points = 0
        self._builder: RequestBuilder | None = None
        #: incarnation (cgroup, inode) -> (counter start ns, container start ns if known). The
        #: counter start never moves once pushed; the container start is looked up until found.
        self._starts: dict[tuple[str, int], tuple[int, int | None]] = {}
        #: workload id -> (identity, host name, resource prototype), rebuilt on any change.
        self._resources: dict[str, tuple[WorkloadIdentity, str, ResourceMetrics]] = {}

    def configure(self, cfg: Mapping[str, Any]) -> str:
        self.extra_headers = {str(k): str(v) for k, v in dict(cfg.get("headers", {})).items()}
        self.resource_extra = {
            str(k): str(v) for k, v in dict(cfg.get("resource_attributes", {})).items()
        }
        self.max_points = int(cfg.get("max_points_per_request", 10_000))
        self.gzip = cfg.get("compression", "gzip") == "gzip"
        self.kinds = frozenset(cfg.get("kinds", KINDS))
        endpoint = str(cfg.get("endpoint", "")).rstrip("/")
        return f"{endpoint}/v1/metrics" if endpoint else ""

    def headers(self) -> Mapping[str, str]:
        out = {"User-Agent": f"container-agent/{__version__}", **self.extra_headers}
        out["Content-Type"] = "application/x-protobuf"
        if self.gzip:
            out["Content-Encoding"] = "gzip"
        return out

    def retryable(self, status: int) -> bool:
        return status in RETRYABLE

    def accepted(self, batch: Batch, body: bytes) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )

        if not body:
            return
        response = ExportMetricsServiceResponse()
        try:
            response.ParseFromString(body)
        except Exception:  # a receiver answering 2xx with another body still took the data
            return
        rejected = response.partial_success.rejected_data_points
        if rejected:
            self.rejected_points += rejected
            self.dropped_samples += rejected
            log.warning("otlp: %s rejected %d points: %s", self.url, rejected,
                        response.partial_success.error_message[:200])

    def encode(self, snapshot: Snapshot, live: list[Metric]) -> list[Batch]:
        from agent.exporters.otlp_encode import (
            RequestBuilder,
            build_requests,
            resource_attributes,
            resource_prototype,
        )

        if self._builder is None:
            self._builder = RequestBuilder()
        resources: dict[str, ResourceMetrics] = {}
        start_of: dict[str, int] = {}
        uptime_of: dict[str, int] = {}
        starts: dict[tuple[str, int], tuple[int, int | None]] = {}
        cached = self._resources
        self._resources = {}
        host = snapshot.host.hostname
        for wid, w in snapshot.workloads.items():
            ident = w.identity
            if ident.kind.value not in self.kinds:
                continue
            entry = cached.get(wid)
            if entry is None or entry[1] != host or (entry[0] is not ident and entry[0] != ident):
                attributes = resource_attributes(ident, host, self.resource_extra)
                entry = (ident, host, resource_prototype(attributes))
            self._resources[wid] = entry
            resources[wid] = entry[2]
            key = ident.incarnation
            known = self._starts.get(key)
            counter_start, started = known or (w.sample.wall_ns or snapshot.wall_ns, None)
            container = ident.kind is WorkloadKind.CONTAINER
            if started is None and (known is None or container):
                # Runtimes create the cgroup before the init process: containers keep asking.
                started = self._start(ident, counter_start)
                if started is not None and known is None:
                    counter_start = started  # first push: the counters' true start
            starts[key] = (counter_start, started)
            start_of[wid] = counter_start
            if started is not None and container:
                uptime_of[wid] = started
        self._starts = starts
        out = []
        for body, points in build_requests(snapshot, self._builder, start_of, uptime_of,
                                           resources, self.max_points):
            out.append(Batch(bytes(cramjam.gzip.compress(body, level=1)) if self.gzip else body,
                             points))
        return out

    @staticmethod
    def _start(ident: WorkloadIdentity, not_after_ns: int) -> int | None:
        """When the container started: the runtime's creation time or its init process's."""
        known = [t for t in (created_ns(ident), process_start_ns(ident.init_pid))
                 if t is not None and t <= not_after_ns]
        return min(known) if known else None
