"""Push snapshots to Prometheus remote-write receivers (Prometheus, Mimir, Thanos, Victoria).

Pipeline, none of it on the collection path: on_snapshot only stores the latest snapshot (at
most one per `interval`); an encoder task turns it into WriteRequest batches in a worker thread
and appends them to a bounded queue (the oldest batch is dropped, and its samples counted, when
the receiver falls behind); a sender task POSTs batches in order, retrying 5xx, 429 and
connection errors with exponential backoff, never retrying other 4xx (the spec forbids it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.core.component import AgentContext, Component, Setting
from agent.exporters.remote_write_codec import SeriesEncoder, encode_write_request, snappy_compress
from agent.model.snapshot import Snapshot

log = logging.getLogger("agent.remote_write")

HEADERS = MappingProxyType(
    {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "User-Agent": "container-agent",
    }
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _not_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _url(v: Any) -> str | None:
    ok = v == "" or v.startswith(("http://", "https://"))
    return None if ok else "must be empty (off) or an http:// or https:// URL"


def _labels(v: Any) -> str | None:
    for k, val in v.items():
        if not isinstance(k, str) or not _LABEL_NAME.match(k) or k.startswith("__"):
            return f"bad label name {k!r}"
        if not isinstance(val, str):
            return f"label {k} must be a string"
    return None


@dataclass(frozen=True, slots=True)
class Batch:
    body: bytes  # snappy-compressed WriteRequest
    samples: int


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


def live_families(ctx: AgentContext, snapshot: Snapshot) -> list[Metric]:
    """The components' own families (network, events, ledger, ...), read on the event loop."""
    out: list[Metric] = []
    for component in ctx.components.values():
        try:
            out.extend(component.metric_families(snapshot))
        except Exception:  # one broken component must not stop the push
            log.exception("remote_write: %s.metric_families failed", component.name)
    return out


class RemoteWriteComponent(Component):
    name = "remote_write"
    settings = MappingProxyType(
        {
            "url": Setting(
                str, "", "receiver URL, e.g. http://prom:9090/api/v1/write; empty = off", _url
            ),
            "interval": Setting((int, float), 15.0, "seconds between pushes", _positive),
            "queue_size": Setting(int, 100, "batches held while the receiver is away", _positive),
            "max_samples_per_send": Setting(int, 2000, "samples per request", _positive),
            "retries": Setting(
                int, 5, "retries of one batch on 5xx/429/connection errors", _not_negative
            ),
            "timeout": Setting((int, float), 10.0, "seconds per HTTP request", _positive),
            "backoff": Setting(
                (int, float), 0.5, "first retry delay, doubled per retry (max 30 s)", _positive
            ),
            "labels": Setting(
                dict, {}, "extra labels on every series (job and instance default to "
                "container-agent and the host name)", _labels
            ),
        }
    )

    def __init__(self) -> None:
        self.url = ""
        self.interval = 15.0
        self.max_samples = 2000
        self.retries = 5
        self.timeout = 10.0
        self.backoff = 0.5
        self.extra_labels: dict[str, str] = {}
        self._ctx: AgentContext | None = None
        self._queue: collections.deque[Batch] = collections.deque()
        self._queue_size = 100
        self._pending: Snapshot | None = None
        self._encoding = False
        self._last_push = -math.inf
        self._wake_encoder = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: Any = None
        self.sent_samples = 0
        self.sent_batches = 0
        self.dropped_samples = 0
        self.failed_requests = 0
        self.retried_requests = 0
        self.last_success_s = 0.0

    async def start(self, ctx: AgentContext) -> None:
        cfg = ctx.section(self.name)
        self._ctx = ctx
        self.url = str(cfg.get("url", ""))
        self.interval = float(cfg.get("interval", 15.0))
        self._queue_size = int(cfg.get("queue_size", 100))
        self.max_samples = int(cfg.get("max_samples_per_send", 2000))
        self.retries = int(cfg.get("retries", 5))
        self.timeout = float(cfg.get("timeout", 10.0))
        self.backoff = float(cfg.get("backoff", 0.5))
        self.extra_labels = {str(k): str(v) for k, v in dict(cfg.get("labels", {})).items()}
        if not self.url:
            return
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [
            asyncio.create_task(self._encoder(), name="remote_write.encoder"),
            asyncio.create_task(self._sender(), name="remote_write.sender"),
        ]
        log.info("remote_write to %s every %.1fs", self.url, self.interval)

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        if not self.url:
            return
        now = time.monotonic()
        if now - self._last_push < self.interval * 0.95:  # tolerate cycle jitter
            return
        self._last_push = now
        self._pending = snapshot  # latest wins if the encoder is still busy
        self._wake_encoder.set()

    def enqueue(self, batches: Iterable[Batch]) -> None:
        """Append to the bounded queue, dropping (and counting) the oldest on overflow."""
        for batch in batches:
            while len(self._queue) >= self._queue_size:
                self.dropped_samples += self._queue.popleft().samples
            self._queue.append(batch)
        self._wake_sender.set()

    async def _encoder(self) -> None:
        while True:
            await self._wake_encoder.wait()
            self._wake_encoder.clear()
            snapshot, self._pending = self._pending, None
            if snapshot is None or self._ctx is None:
                continue
            self._encoding = True
            try:
                live = live_families(self._ctx, snapshot)
                batches = await asyncio.to_thread(self._encode, snapshot, live)
            except Exception:  # a bad family must not stop pushes for good
                log.exception("remote_write: encoding snapshot %d failed", snapshot.seq)
                continue
            finally:
                self._encoding = False
            self.enqueue(batches)

    def _encode(self, snapshot: Snapshot, live: list[Metric]) -> list[Batch]:
        cadvisor = bool(self._ctx.config.get("cadvisor", False)) if self._ctx else False
        families = snapshot_metric_families(snapshot, cadvisor) + live
        # What a scrape would add: job and instance, so the dashboards' $instance works alike.
        labels = {"job": "container-agent", "instance": snapshot.host.hostname}
        labels.update(self.extra_labels)
        return families_to_batches(
            families, snapshot.wall_ns // 1_000_000, labels, self.max_samples
        )

    async def _sender(self) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            while self._queue:
                batch = self._queue[0]
                ok = await self.send(batch)
                if self._queue and self._queue[0] is batch:
                    self._queue.popleft()
                if ok:
                    self.sent_samples += batch.samples
                    self.sent_batches += 1
                    self.last_success_s = time.time()
                else:
                    self.dropped_samples += batch.samples

    async def send(self, batch: Batch) -> bool:
        """POST one batch; True when the receiver accepted it."""
        import aiohttp

        delay = self.backoff
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried_requests += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            try:
                async with self._session.post(self.url, data=batch.body, headers=HEADERS) as r:
                    if 200 <= r.status < 300:
                        return True
                    detail = (await r.text())[:200].strip()
                    self.failed_requests += 1
                    if r.status != 429 and r.status < 500:
                        log.warning(
                            "remote_write: %s refused a batch: %d %s", self.url, r.status, detail
                        )
                        return False
                    log.warning("remote_write: %s answered %d %s", self.url, r.status, detail)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.failed_requests += 1
                log.warning("remote_write: %s: %s", self.url, exc or type(exc).__name__)
        log.warning("remote_write: giving up on a batch of %d samples", batch.samples)
        return False

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        p = "container_agent_remote_write_"
        counters = (
            ("sent_samples", "Samples accepted by the remote-write receiver.", self.sent_samples),
            ("sent_batches", "Requests accepted by the remote-write receiver.", self.sent_batches),
            (
                "dropped_samples",
                "Samples dropped: queue overflow, 4xx, or retries exhausted.",
                self.dropped_samples,
            ),
            (
                "failed_requests",
                "Remote-write requests that failed (any attempt).",
                self.failed_requests,
            ),
            ("retried_requests", "Remote-write attempts that were retries.", self.retried_requests),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(p + name, doc, value=value)
        yield GaugeMetricFamily(
            p + "queue_batches", "Batches waiting to be sent.", value=len(self._queue)
        )
        yield GaugeMetricFamily(
            p + "last_success_timestamp_seconds",
            "Unix time of the last accepted request (0 = never).",
            value=self.last_success_s,
        )

    async def flush(self, timeout: float) -> None:
        """Wait until the queue is empty (or timeout), e.g. before stopping."""
        deadline = time.monotonic() + timeout
        while (
            self._queue or self._pending is not None or self._encoding
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._tasks:
            await self.flush(min(self.timeout, 5.0))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
