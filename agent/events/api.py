"""HTTP: GET /api/v1/events (a page from the store) and /api/v1/events/stream (SSE).

The stream subscribes first, then replays the store from the client's last id
(`Last-Event-ID` or `since`), then forwards live events, skipping ids already sent: a client that
reconnects misses nothing still retained and gets nothing twice. A subscriber that falls more
than its queue behind is not cut off; it is refilled from the store. Events are published only
once committed, so the store always holds what the live queue carries; store reads run in
worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from agent.api.errors import json_error
from agent.core.exit_codes import ExitCode
from agent.events.model import Event, EventType
from agent.events.store import MAX_LIMIT, EventLog

_KNOWN_TYPES = frozenset(t.value for t in EventType)
_PAGE = 500
#: How often a quiet stream checks that its client is still there (s).
_CHECK_S = 1.0


class BadQuery(ValueError):
    """A bad query parameter; str(e) is one line for the user."""


@dataclass(frozen=True, slots=True)
class Filters:
    types: tuple[str, ...] = ()
    container: str | None = None

    def match(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        if not self.container:
            return True
        c = event.container
        if c is None:
            return False
        ref = self.container
        return ref in (c.id, c.name, c.cgroup) or (len(ref) >= 12 and c.id.startswith(ref))


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(1000))
    overflowed: bool = False


class Hub:
    """Live fan-out to SSE subscribers (runs on the event loop)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        #: The id of the last event published (set from the store at start): a stream that
        #: starts "from now" starts after it, with no store read on the event loop.
        self.last_id = 0

    def publish(self, event: Event) -> None:
        self.last_id = max(self.last_id, event.id)
        for sub in self.subscribers:
            if sub.overflowed:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True

    def close(self) -> None:
        for sub in self.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)


def _parse_int(raw: str | None, name: str, minimum: int = 0) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise BadQuery(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_filters(query: dict[str, str] | object) -> Filters:
    assert hasattr(query, "get") and hasattr(query, "getall")
    types: list[str] = []
    for raw in query.getall("type", []):
        types.extend(t for t in raw.split(",") if t)
    unknown = [t for t in types if t not in _KNOWN_TYPES]
    if unknown:
        known = ", ".join(sorted(_KNOWN_TYPES))
        raise BadQuery(f"unknown event type {unknown[0]!r} (known: {known})")
    return Filters(tuple(types), query.get("container") or None)


def sse_frame(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {json.dumps(event.to_json())}\n\n".encode()


class EventsApi:
    def __init__(self, log: Callable[[], EventLog], hub: Hub, heartbeat_s: float) -> None:
        self._log = log
        self.hub = hub
        self.heartbeat_s = heartbeat_s
        #: Times a subscriber fell behind and was refilled from the store.
        self.refills = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/events", self.list_events),
            web.get("/api/v1/events/stream", self.stream),
        ]

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        try:
            filters = parse_filters(request.query)
            since = _parse_int(request.query.get("since"), "since")
            limit = _parse_int(request.query.get("limit"), "limit", minimum=1) or 100
        except BadQuery as e:
            return json_error(str(e), ExitCode.USAGE)
        if limit > MAX_LIMIT:
            return json_error(f"limit must be <= {MAX_LIMIT}, got {limit}", ExitCode.USAGE)
        log = self._log()

        def page() -> bytes:  # SQLite reads and the JSON of up to 10,000 events: off the loop
            events = log.query(since, filters.types, filters.container, limit)
            return json.dumps({"events": [e.to_json() for e in events],
                               "last_id": log.last_id()}).encode()

        return web.Response(body=await asyncio.to_thread(page), content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            filters = parse_filters(request.query)
            last = _parse_int(request.headers.get("Last-Event-ID"), "Last-Event-ID")
            if last is None:
                last = _parse_int(request.query.get("since"), "since")
        except BadQuery as e:
            return json_error(str(e), ExitCode.USAGE)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        sub = Subscriber()
        self.hub.subscribers.add(sub)
        log = self._log()
        try:
            if last is None:
                last = self.hub.last_id  # no position given: from now on
            await resp.write(b"retry: 2000\n\n")
            last = await self._replay(resp, log, last, filters)
            quiet_since = time.monotonic()
            while True:
                if sub.overflowed:
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    sub.overflowed = False
                    self.refills += 1
                    last = await self._replay(resp, log, last, filters)
                try:
                    event = await asyncio.wait_for(sub.queue.get(), _CHECK_S)
                except TimeoutError:
                    # aiohttp does not cancel a handler whose client left: look every second.
                    if request.transport is None or request.transport.is_closing():
                        break
                    if time.monotonic() - quiet_since >= self.heartbeat_s:
                        await resp.write(b": keep-alive\n\n")
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                if event is None:
                    break
                if event.id <= last:
                    continue
                last = event.id
                if filters.match(event):
                    await resp.write(sse_frame(event))
        except ConnectionResetError:
            pass
        finally:
            self.hub.subscribers.discard(sub)
        return resp

    async def _replay(
        self, resp: web.StreamResponse, log: EventLog, last: int, filters: Filters
    ) -> int:
        while True:
            page: Sequence[Event] = await asyncio.to_thread(
                log.query, last, filters.types, filters.container, _PAGE)
            for event in page:
                await resp.write(sse_frame(event))
                last = event.id
            if len(page) < _PAGE:
                return last
