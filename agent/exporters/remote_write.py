"""Push snapshots to Prometheus remote-write receivers (Prometheus, Mimir, Thanos, Victoria).

The pipeline (latest snapshot -> encoder thread -> bounded queue -> sender) is
agent/exporters/push.py; here: WriteRequest batches, and retries on 5xx, 429 and connection
errors only, never on other 4xx (the spec forbids it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from prometheus_client.metrics_core import Metric

from agent.core.component import Setting
from agent.exporters.push import (
    Batch,
    PushComponent,
    PushMetricNames,
    http_url,
    not_negative,
    positive,
)
from agent.exporters.remote_write_codec import SeriesEncoder, encode_write_request, snappy_compress
from agent.model.snapshot import Snapshot

HEADERS = MappingProxyType(
    {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "User-Agent": "container-agent",
    }
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _labels(v: Any) -> str | None:
    for k, val in v.items():
        if not isinstance(k, str) or not _LABEL_NAME.match(k) or k.startswith("__"):
            return f"bad label name {k!r}"
        if not isinstance(val, str):
            return f"label {k} must be a string"
    return None


def families_to_batches(
    families: Iterable[Metric],
    timestamp_ms: int,
    extra_labels: Mapping[str, str],
    max_samples: int,
) -> list[Batch]:
    """Encode metric families as WriteRequests of at most max_samples samples each.

    `_created` samples are skipped (they double the series count for no query value); extra
    labels never override a label the series already has, like Prometheus external_labels.
    """
    batches: list[Batch] = []
    pending: list[bytes] = []
    seen: set[int] = set()  # hashes of label sets: exact bytes would double peak memory
    encoder = SeriesEncoder()
    for family in families:
        for s in family.samples:
            if s.name.endswith("_created") and family.type in ("counter", "histogram", "summary"):
                continue
            if math.isnan(s.value) and family.type != "gauge":
                continue
            labels = dict(extra_labels)
            labels.update(s.labels)
            labels["__name__"] = s.name
            encoded = encoder.labels(labels)
            key = hash(encoded)
            if key in seen:  # a duplicate series would make the receiver reject the batch
                continue
            seen.add(key)
            ts = int(float(s.timestamp) * 1000) if s.timestamp is not None else timestamp_ms
            pending.append(encoder.series(encoded, float(s.value), ts))
            if len(pending) >= max_samples:
                batches.append(_seal(pending))
                pending = []
    if pending:
        batches.append(_seal(pending))
    return batches


def _seal(series: list[bytes]) -> Batch:
    return Batch(snappy_compress(encode_write_request(series)), len(series))


def snapshot_metric_families(snapshot: Snapshot, cadvisor: bool) -> list[Metric]:
    """The snapshot's families as /metrics shows them (cAdvisor names too when enabled)."""
    from agent.exporters.metrics import snapshot_families

    families = list(snapshot_families(snapshot))
    if cadvisor:
        from agent.exporters.cadvisor import cadvisor_families

        families.extend(cadvisor_families(snapshot))
    return families


class RemoteWriteComponent(PushComponent):
    name = "remote_write"
    what = "samples"
    metric_names = PushMetricNames(
        sent="container_agent_remote_write_sent_samples_total",
        sent_batches="container_agent_remote_write_sent_batches_total",
        dropped="container_agent_remote_write_dropped_samples_total",
        failed_requests="container_agent_remote_write_failed_requests_total",
        retried_requests="container_agent_remote_write_retried_requests_total",
        queue_batches="container_agent_remote_write_queue_batches",
        last_success="container_agent_remote_write_last_success_timestamp_seconds",
    )
    settings = MappingProxyType(
        {
            "url": Setting(
                str, "", "receiver URL, e.g. http://prom:9090/api/v1/write; empty = off", http_url
            ),
            "interval": Setting((int, float), 15.0, "seconds between pushes", positive),
            "queue_size": Setting(int, 100, "batches held while the receiver is away", positive),
            "max_samples_per_send": Setting(int, 2000, "samples per request", positive),
            "retries": Setting(
                int, 5, "retries of one batch on 5xx/429/connection errors", not_negative
            ),
            "timeout": Setting((int, float), 10.0, "seconds per HTTP request", positive),
            "backoff": Setting(
                (int, float), 0.5, "first retry delay, doubled per retry (max 30 s)", positive
            ),
            "labels": Setting(
                dict, {}, "extra labels on every series (job and instance default to "
                "container-agent and the host name)", _labels
            ),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.max_samples = 2000
        self.extra_labels: dict[str, str] = {}

    def configure(self, cfg: Mapping[str, Any]) -> str:
        self.max_samples = int(cfg.get("max_samples_per_send", 2000))
        self.extra_labels = {str(k): str(v) for k, v in dict(cfg.get("labels", {})).items()}
        return str(cfg.get("url", ""))

    def headers(self) -> Mapping[str, str]:
        return HEADERS

    def wants_live_families(self) -> bool:
        return True

    def encode(self, snapshot: Snapshot, live: list[Metric]) -> list[Batch]:
        cadvisor = bool(self._ctx.config.get("cadvisor", False)) if self._ctx else False
        families = snapshot_metric_families(snapshot, cadvisor) + live
        # What a scrape would add: job and instance, so the dashboards' $instance works alike.
        labels = {"job": "container-agent", "instance": snapshot.host.hostname}
        labels.update(self.extra_labels)
        return families_to_batches(
            families, snapshot.wall_ns // 1_000_000, labels, self.max_samples
        )
