"""Event sinks: Grafana annotations and a generic JSON webhook.

Delivery runs in its own asyncio task per sink, fed through a bounded queue: `offer()` never
waits, so a slow or dead sink cannot slow collection. A full queue drops the event and counts
it; so does a delivery that still fails after the retries (exponential backoff between tries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.events.model import Event

log = logging.getLogger("agent.events.sinks")


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    queue_size: int = 1000
    #: Tries after the first one.
    retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 0)."""
        return float(min(self.backoff_s * (2**attempt), self.backoff_max_s))


class PermanentError(Exception):
    """The receiver refused the event for good (4xx other than 408/429): no retry."""


class Sink:
    """One destination; subclasses say how to turn an event into a request."""

    kind = "sink"

    def __init__(self, url: str, policy: DeliveryPolicy) -> None:
        self.url = url
        self.policy = policy
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=policy.queue_size)
        self.dropped = 0
        self.delivered = 0
        self.attempts = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def request(self, event: Event) -> tuple[dict[str, Any], dict[str, str]]:
        """(JSON body, extra headers)."""
        raise NotImplementedError

    def offer(self, event: Event) -> None:
        """Queue an event for delivery; never blocks. Must run on the event loop."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink-{self.kind}")

    async def stop(self, flush_s: float = 2.0) -> None:
        """Give queued events up to `flush_s` to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), flush_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            while True:
                event = await self.queue.get()
                try:
                    await self._deliver(session, event)
                finally:
                    self.queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, event: Event) -> None:
        body, headers = self.request(event)
        for attempt in range(self.policy.retries + 1):
            if attempt:
                await asyncio.sleep(self.policy.delay(attempt - 1))
            self.attempts += 1
            try:
                async with session.post(self.url, json=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.delivered += 1
                        return
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        raise PermanentError(f"HTTP {resp.status}")
                    problem = f"HTTP {resp.status}"
            except PermanentError as e:
                log.warning("%s sink refused event %d: %s", self.kind, event.id, e)
                break
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                problem = str(e) or type(e).__name__
            log.debug("%s sink, event %d, try %d: %s", self.kind, event.id, attempt + 1, problem)
        self.dropped += 1


class WebhookSink(Sink):
    """POSTs the event's JSON (the same document the API returns)."""

    kind = "webhook"

    def request(self, event: Event) -> tuple[dict[str, Any], dict[str, str]]:
        return event.to_json(), {}


class GrafanaSink(Sink):
    """POST {grafana}/api/annotations: an organisation annotation tagged from the event."""

    kind = "grafana"

    def __init__(self, base_url: str, token: str, policy: DeliveryPolicy) -> None:
        super().__init__(base_url.rstrip("/") + "/api/annotations", policy)
        self.token = token

    def request(self, event: Event) -> tuple[dict[str, Any], dict[str, str]]:
        return annotation(event), (
            {"Authorization": f"Bearer {self.token}"} if self.token else {}
        )


def annotation(event: Event) -> dict[str, Any]:
    tags = ["container-agent", event.type, f"severity:{event.severity}"]
    c = event.container
    if c is not None:
        tags += [f"container:{c.name or c.id}", f"cgroup:{c.cgroup}"]
        if c.runtime:
            tags.append(f"runtime:{c.runtime}")
    return {"time": event.ts_ns // 1_000_000, "tags": tags, "text": event.summary()}


def build_sinks(section: Any) -> list[Sink]:
    """The sinks the [events] settings ask for (none by default)."""
    policy = DeliveryPolicy(
        queue_size=int(section["queue_size"]),
        retries=int(section["retry_limit"]),
        backoff_s=float(section["retry_backoff_s"]),
        backoff_max_s=float(section["retry_backoff_max_s"]),
        timeout_s=float(section["delivery_timeout_s"]),
    )
    sinks: list[Sink] = []
    if section["grafana_url"]:
        sinks.append(GrafanaSink(section["grafana_url"], section["grafana_token"], policy))
    if section["webhook_url"]:
        sinks.append(WebhookSink(section["webhook_url"], policy))
    return sinks
