"""How long the agent takes to answer, measured where it answers.

A client's latency on a busy host is the agent's part (the event loop reaching the request,
the handler) plus the host's (the client's own scheduling, TCP): these two histograms tell them
apart. `container_agent_event_loop_lag_seconds`: how late a callback due every LAG_TICK_S ran
(a request waits as long for the loop; epoll's millisecond timeout makes ~1 ms the floor).
`container_agent_http_request_duration_seconds{handler}`: from the handler's call to its
response (the body written too, for a streamed one); event streams (SSE) are not timed, their
"duration" is the client's stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from agent.core.urgency import URGENT

#: Upper bounds (seconds): sub-millisecond answers up to a checkpoint's seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)
#: The loop-lag probe's period: ten cheap callbacks a second.
LAG_TICK_S = 0.1
_SSE = "text/event-stream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Buckets:
    """Per-bucket counts (not cumulative) and a sum, written by the loop's thread only. A
    scrape reads them from a worker thread: the total is the counts' sum, so +Inf always
    equals the last cumulative bucket."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(BUCKETS) and seconds > BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.sum += seconds

    def add_to(self, fam: HistogramMetricFamily, labels: list[str]) -> None:
        counts, total = list(self.counts), self.sum
        cumulative, buckets = 0, []
        for bound, n in zip((*map(repr, BUCKETS), "+Inf"), counts, strict=True):
            cumulative += n
            buckets.append((bound, float(cumulative)))
        fam.add_metric(labels, buckets, total)


class ApiTiming:
    """The HTTP handlers' times (an aiohttp middleware) and the event loop's lag."""

    def __init__(self) -> None:
        self.handlers: dict[str, Buckets] = {}
        self.lag = Buckets()
        self._lag_handle: asyncio.TimerHandle | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            resp = await handler(request)
        except web.HTTPException:  # an answer too (a 404, a 503 before the first snapshot)
            self._observe(request, started)
            raise
        if resp.content_type != _SSE:
            self._observe(request, started)
        return resp

    def _observe(self, request: web.Request, started: float) -> None:
        resource = request.match_info.route.resource
        # The route's pattern, not the path: one series per route, not per container.
        name = resource.canonical if resource is not None else "unmatched"
        times = self.handlers.get(name)
        if times is None:
            times = self.handlers[name] = Buckets()
        times.observe(time.perf_counter() - started)

    def start_lag_probe(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + LAG_TICK_S

        def tick() -> None:
            nonlocal due
            now = loop.time()
            self.lag.observe(max(0.0, now - due))
            due = now + LAG_TICK_S
            self._lag_handle = loop.call_at(due, tick)

        self._lag_handle = loop.call_at(due, tick)

    def stop(self) -> None:
        if self._lag_handle is not None:
            self._lag_handle.cancel()
            self._lag_handle = None

    def families(self) -> list[Metric]:
        http = HistogramMetricFamily(
            "container_agent_http_request_duration_seconds",
            "From an HTTP handler's call to its response sent, per route (event streams not "
            "timed)", labels=["handler"])
        for name, times in sorted(self.handlers.items()):
            times.add_to(http, [name])
        lag = HistogramMetricFamily(
            "container_agent_event_loop_lag_seconds",
            f"How late a callback due every {LAG_TICK_S:g} s ran on the agent's event loop "
            "(what a request waits for the loop)")
        self.lag.add_to(lag, [])
        waits = CounterMetricFamily(
            "container_agent_background_waits_total",
            "Times a collection pass or a render waited for urgent work: a final read or a "
            "kernel notice (urgent), a step of the event loop (event_loop)",
            labels=["waited_for"])
        waits.add_metric(["urgent"], URGENT.waits)
        waits.add_metric(["event_loop"], URGENT.loop_waits)
        return [http, lag, waits]
