"""The agent's own answer times (agent.api.timing): a real aiohttp server on loopback, real
requests, and the event loop's lag when something holds the loop."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

import agent.core.urgency as urgency_module
from agent.api.timing import LAG_TICK_S, ApiTiming
from agent.core.urgency import URGENT


def _buckets(timing: ApiTiming, family: str, labels: dict[str, str]) -> dict[str, float]:
    """{le: cumulative count} of one histogram series."""
    fam = next(f for f in timing.families() if f.name == family)
    return {s.labels["le"]: s.value for s in fam.samples
            if s.name.endswith("_bucket") and {k: v for k, v in s.labels.items()
                                               if k != "le"} == labels}


async def _serve_and_request(timing: ApiTiming) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.03)
        return web.Response(text="slow")

    async def thing(request: web.Request) -> web.Response:
        if request.match_info["id"] == "missing":
            raise web.HTTPNotFound(text="no such thing")
        return web.Response(text=request.match_info["id"])

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await asyncio.sleep(0.05)
        return resp

    app = web.Application(middlewares=[timing.middleware])
    app.add_routes([web.get("/slow", slow), web.get("/things/{id}", thing),
                    web.get("/stream", stream)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            for path in ("/slow", "/slow", "/slow", "/things/a", "/things/b",
                         "/things/missing", "/nowhere", "/stream"):
                async with client.get(path) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()


def test_each_route_is_timed_by_its_pattern_errors_too_and_streams_not() -> None:
    timing = ApiTiming()
    asyncio.run(_serve_and_request(timing))
    slow = _buckets(timing, "container_agent_http_request_duration_seconds",
                    {"handler": "/slow"})
    assert slow["0.025"] == 0 and slow["+Inf"] == 3  # each slept 30 ms in the handler
    things = _buckets(timing, "container_agent_http_request_duration_seconds",
                      {"handler": "/things/{id}"})
    assert things["+Inf"] == 3  # one series for the route, its 404 included
    assert _buckets(timing, "container_agent_http_request_duration_seconds",
                    {"handler": "unmatched"})["+Inf"] == 1
    assert set(timing.handlers) == {"/slow", "/things/{id}", "unmatched"}  # no /stream
    assert timing.handlers["/slow"].sum >= 0.09


def test_the_loop_lag_shows_a_callback_that_held_the_loop() -> None:
    timing = ApiTiming()

    async def run() -> None:
        timing.start_lag_probe(asyncio.get_running_loop())
        await asyncio.sleep(LAG_TICK_S * 2.5)
        time.sleep(0.15)  # holds the loop past a tick that is due
        await asyncio.sleep(LAG_TICK_S * 2.5)
        timing.stop()

    asyncio.run(run())
    lag = _buckets(timing, "container_agent_event_loop_lag_seconds", {})
    assert lag["+Inf"] >= 3
    assert lag["+Inf"] - lag["0.05"] >= 1  # the held tick ran > 50 ms late
    assert timing.lag.sum >= 0.05


def test_background_waits_are_counted_by_what_they_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urgency_module, "LOOP_GIVE_WAY_MAX_S", 0.01)
    monkeypatch.setattr(urgency_module, "GIVE_WAY_MAX_S", 0.01)

    def counts() -> dict[str, float]:
        fam = next(f for f in ApiTiming().families()
                   if f.name == "container_agent_background_waits")
        return {s.labels["waited_for"]: s.value for s in fam.samples}
    before = counts()
    URGENT.loop_woke()  # the process's own urgency, as the agent's threads see it
    try:
        URGENT.give_way()
    finally:
        URGENT.loop_sleeps()
    URGENT.begin()
    try:
        URGENT.give_way()
        URGENT.give_way()
    finally:
        URGENT.end()
    URGENT.give_way()  # nothing urgent, the loop asleep: no wait
    after = counts()
    assert after["event_loop"] - before["event_loop"] == 1
    assert after["urgent"] - before["urgent"] == 2
