"""Read decoded OTLP requests the way a test asks about them: per resource, per metric."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint


def value_of(v: AnyValue) -> str | int | float | bool:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else ""


def attrs(kvs: list[KeyValue] | object) -> dict[str, str | int | float | bool]:
    return {kv.key: value_of(kv.value) for kv in kvs}  # type: ignore[attr-defined]


@dataclass
class Resource:
    attributes: dict[str, str | int | float | bool]
    metrics: dict[str, Metric]

    def points(self, name: str) -> list[NumberDataPoint]:
        m = self.metrics[name]
        return list(m.gauge.data_points if m.WhichOneof("data") == "gauge" else m.sum.data_points)

    def value(self, name: str, **where: str) -> float:
        """Sum of the metric's points whose attributes match `where` (keys with _ for .)."""
        want = {k.replace("__", "."): v for k, v in where.items()}
        total = 0.0
        for p in self.points(name):
            a = attrs(p.attributes)
            if all(a.get(k) == v for k, v in want.items()):
                total += p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
        return total


def resources(request: ExportMetricsServiceRequest) -> Iterator[Resource]:
    for rm in request.resource_metrics:
        metrics: dict[str, Metric] = {}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                assert m.name not in metrics, f"{m.name} twice in one resource"
                metrics[m.name] = m
        yield Resource(attrs(rm.resource.attributes), metrics)


def find(request: ExportMetricsServiceRequest, key: str, value: str) -> Resource | None:
    for r in resources(request):
        if r.attributes.get(key) == value:
            return r
    return None
