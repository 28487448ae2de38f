"""The push pipeline shared by remote write and OTLP: latest snapshot -> encoder -> bounded
queue -> sender with retries.

None of it is on the collection path: on_snapshot only stores the latest snapshot (at most one
per `interval`); an encoder task turns it into request bodies in a worker thread and appends
them to a bounded queue (the oldest batch is dropped, and its points counted, when the receiver
falls behind); a sender task POSTs batches in order, retrying what the protocol says may be
retried (`retryable`) with exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.core.component import AgentContext, Component
from agent.model.snapshot import Snapshot

log = logging.getLogger("agent.push")

#: Backoff between retries doubles up to this many seconds.
MAX_BACKOFF_S = 30.0


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def not_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def http_url(v: Any) -> str | None:
    ok = v == "" or v.startswith(("http://", "https://"))
    return None if ok else "must be empty (off) or an http:// or https:// URL"


def string_table(v: Any) -> str | None:
    for k, val in v.items():
        if not isinstance(val, str):
            return f"{k} must be a string"
    return None


@dataclass(frozen=True, slots=True)
class Batch:
    body: bytes  # one request body, ready to POST
    samples: int  # data points in it (what the dropped counter counts)


@dataclass(frozen=True, slots=True)
class PushMetricNames:
    """The full exported names of one pipeline's own metrics (written out by each user)."""

    sent: str
    sent_batches: str
    dropped: str
    failed_requests: str
    retried_requests: str
    queue_batches: str
    last_success: str


def live_families(ctx: AgentContext, snapshot: Snapshot) -> list[Metric]:
    """The components' own families (network, events, ledger, ...), read on the event loop."""
    out: list[Metric] = []
    for component in ctx.components.values():
        try:
            out.extend(component.metric_families(snapshot))
        except Exception:  # one broken component must not stop the push
            log.exception("push: %s.metric_families failed", component.name)
    return out


class PushComponent(Component):
    """Base of a push exporter. Subclasses set `name`, `settings`, `metric_names`, `what`
    (one word for logs), and implement `configure`, `encode` and `headers`."""

    metric_names: PushMetricNames
    what = "push"

    def __init__(self) -> None:
        self.url = ""
        self.interval = 15.0
        self.retries = 5
        self.timeout = 10.0
        self.backoff = 0.5
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

    # --- what a subclass provides ---------------------------------------------------------

    def configure(self, cfg: Mapping[str, Any]) -> str:
        """Read the subclass's own settings; return the URL to POST to ("" = off)."""
        raise NotImplementedError

    def encode(self, snapshot: Snapshot, live: list[Metric]) -> list[Batch]:
        """Runs in a worker thread: the snapshot (and live families) as request bodies."""
        raise NotImplementedError

    def headers(self) -> Mapping[str, str]:
        raise NotImplementedError

    def retryable(self, status: int) -> bool:
        return status == 429 or status >= 500

    def accepted(self, batch: Batch, body: bytes) -> None:
        """A 2xx answer's body, for protocols that report partial success."""
        return None

    def wants_live_families(self) -> bool:
        return False

    # --- the pipeline ----------------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        cfg = ctx.section(self.name)
        self._ctx = ctx
        self.interval = float(cfg.get("interval", 15.0))
        self._queue_size = int(cfg.get("queue_size", 100))
        self.retries = int(cfg.get("retries", 5))
        self.timeout = float(cfg.get("timeout", 10.0))
        self.backoff = float(cfg.get("backoff", 0.5))
        self.url = self.configure(cfg)
        if not self.url:
            return
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [
            ctx.health.spawn(self.name, self._encoder(), name=f"{self.name}.encoder"),
            ctx.health.spawn(self.name, self._sender(), name=f"{self.name}.sender"),
        ]
        log.info("%s to %s every %.1fs", self.name, self.url, self.interval)

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
                live = live_families(self._ctx, snapshot) if self.wants_live_families() else []
                batches = await asyncio.to_thread(self.encode, snapshot, live)
            except Exception:  # a bad family must not stop pushes for good
                log.exception("%s: encoding snapshot %d failed", self.name, snapshot.seq)
                continue
            finally:
                self._encoding = False
            self.enqueue(batches)

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
        headers = self.headers()
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried_requests += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            try:
                async with self._session.post(self.url, data=batch.body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        self.accepted(batch, await r.read())
                        return True
                    detail = (await r.text(errors="replace"))[:200].strip()
                    self.failed_requests += 1
                    if not self.retryable(r.status):
                        log.warning("%s: %s refused a batch: %d %s", self.name, self.url,
                                    r.status, detail)
                        return False
                    log.warning("%s: %s answered %d %s", self.name, self.url, r.status, detail)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.failed_requests += 1
                log.warning("%s: %s: %s", self.name, self.url, exc or type(exc).__name__)
        log.warning("%s: giving up on a batch of %d %s", self.name, batch.samples, self.what)
        return False

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        n = self.metric_names
        w = self.what
        counters = (
            (n.sent, f"{w} accepted by the receiver.", self.sent_samples),
            (n.sent_batches, "Requests accepted by the receiver.", self.sent_batches),
            (n.dropped, f"{w} dropped: queue overflow, refused, or retries exhausted.",
             self.dropped_samples),
            (n.failed_requests, "Requests that failed (any attempt).", self.failed_requests),
            (n.retried_requests, "Attempts that were retries.", self.retried_requests),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(n.queue_batches, "Batches waiting to be sent.",
                                value=len(self._queue))
        yield GaugeMetricFamily(n.last_success,
                                "Unix time of the last accepted request (0 = never).",
                                value=self.last_success_s)

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
