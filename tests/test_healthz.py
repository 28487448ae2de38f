"""/healthz tells the truth: 503 while starting and when the snapshot is older than 3 intervals."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api.read import STALE_INTERVALS, ReadApi
from agent.exporters.exposition import MetricsRenderer
from agent.model.snapshot import HostInfo, Snapshot

HOST = HostInfo("h", "b", "m", "k", "hybrid", 1, 1, "v")


def _snapshot(age_s: float) -> Snapshot:
    wall = time.time_ns() - int(age_s * 1e9)
    return Snapshot(7, wall, time.monotonic_ns(), 0, HOST, MappingProxyType({}))


def test_healthz_starting_fresh_and_stale() -> None:
    current: list[Snapshot | None] = [None]
    interval = 2.0

    async def body() -> None:
        api = ReadApi(lambda: current[0], MetricsRenderer(False, []), [], time.monotonic(),
                      lambda: interval)
        app = web.Application()
        app.add_routes(api.routes())
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/healthz")
            assert r.status == 503 and (await r.json())["status"] == "starting"
            current[0] = _snapshot(interval * STALE_INTERVALS - 1)
            r = await client.get("/healthz")
            assert r.status == 200 and (await r.json())["status"] == "ok"
            current[0] = _snapshot(interval * STALE_INTERVALS + 1)
            r = await client.get("/healthz")
            doc = await r.json()
            assert r.status == 503 and doc["status"] == "stale"
            assert doc["snapshot_age_s"] > interval * STALE_INTERVALS

    asyncio.run(body())
