"""Sinks against real local HTTP receivers (aiohttp servers on 127.0.0.1).

The Grafana receiver stands in for Grafana's annotations API (no Grafana on this machine): it
checks what Grafana checks here, the path, the bearer token and the JSON fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from tests.test_events_harness import started

WHO = WorkloadIdentity("abc123" * 10 + "abcd", WorkloadKind.CONTAINER, "runc", "db-1",
                       "/test/db-1", 77)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def receiver(path: str, handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_webhook_gets_the_event_on_the_third_try(tmp_path: Path) -> None:
    hits: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(await request.json())
        return web.Response(status=500 if len(hits) <= 2 else 200)

    async def body() -> None:
        async with receiver("/hook", handler) as base, started(
            tmp_path, watch_new_cgroups=False, webhook_url=base + "/hook",
            retry_backoff_s=0.05, retry_limit=3,
        ) as h:
            sink = h.comp.sinks[0]
            await h.wait_for(lambda: sink.delivered >= 1)  # agent_started
            hits.clear()
            sink.delivered = 0
            h.ctx.emit("oom_kill", WHO, "", {"total": 1})
            await h.wait_for(lambda: sink.delivered >= 1)
            assert len(hits) == 3
            assert all(doc["type"] == "oom_kill" for doc in hits)
            assert hits[2]["container"]["name"] == "db-1" and hits[2]["fields"] == {"total": 1}
            assert sink.dropped == 0
    asyncio.run(body())


def test_dead_webhook_drops_and_never_blocks(tmp_path: Path) -> None:
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def body() -> None:
        async with receiver("/dead", never) as base, started(
            tmp_path, watch_new_cgroups=False, webhook_url=base + "/dead", queue_size=5,
            retry_limit=1, retry_backoff_s=0.05, delivery_timeout_s=0.3,
        ) as h:
            sink = h.comp.sinks[0]
            for i in range(50):
                h.ctx.emit("killed", WHO, "", {"seq": i})
            # Every emit returned (and was stored) while the first delivery still hangs.
            await asyncio.to_thread(h.ctx.store.flush)
            assert h.comp.log is not None and h.comp.log.count() == 51
            assert sink.delivered == 0 and sink.attempts <= 1
            await h.wait_for(lambda: sink.dropped >= 45)
            families = {m.name: m for m in h.comp.metric_families(None)}  # type: ignore[arg-type]
            dropped = families["container_agent_event_deliveries_dropped"].samples
            assert [(s.labels["sink"], s.value) for s in dropped] == [("webhook", sink.dropped)]
            # Retries exhaust too: the queued ones end as dropped, none delivered.
            await h.wait_for(lambda: sink.queue.qsize() == 0, timeout=15)
            await h.wait_for(lambda: sink.dropped == 51, timeout=5)
            assert sink.delivered == 0
    asyncio.run(body())


def test_grafana_annotation(tmp_path: Path) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    async def annotations(request: web.Request) -> web.Response:
        got.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"id": len(got), "message": "Annotation added"})

    async def body() -> None:
        async with receiver("/grafana/api/annotations", annotations) as base, started(
            tmp_path, watch_new_cgroups=False, grafana_url=base + "/grafana/",
            grafana_token="glsa_test",
        ) as h:
            h.ctx.emit("pids_max", WHO, "", {"count": 2, "total": 5})
            await h.wait_for(lambda: len(got) >= 2)
            auth, doc = got[1]
            assert auth == "Bearer glsa_test"
            assert h.comp.log is not None
            event = h.comp.log.query(types=("pids_max",))[0]
            assert doc["time"] == event.ts_ns // 1_000_000
            assert set(doc["tags"]) >= {"pids_max", "container:db-1", "runtime:runc",
                                        "severity:warning", "cgroup:/test/db-1"}
            assert "count=2" in doc["text"]
    asyncio.run(body())
