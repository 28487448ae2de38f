"""The events HTTP API on a real aiohttp server: pages, filters, errors, and SSE resumption."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from tests.test_events_harness import Harness, started

WHO = WorkloadIdentity("c0ffee" * 10 + "abcd", WorkloadKind.CONTAINER, "runc", "web-1",
                       "/test/web-1", 4242)


@asynccontextmanager
async def served(h: Harness) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes(h.comp.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def emit_from_thread(h: Harness, n: int, etype: str = "killed", start: int = 0) -> None:
    """Emit like another component's worker thread would."""
    def work() -> None:
        for i in range(start, start + n):
            h.ctx.emit(etype, WHO, "", {"seq": i})
    await asyncio.get_running_loop().run_in_executor(None, work)


class SseReader:
    """A minimal EventSource: collects (id, document) pairs from a live stream."""

    def __init__(self, session: aiohttp.ClientSession, url: str, last_id: int | None) -> None:
        self.got: list[tuple[int, dict[str, Any]]] = []
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        self.task = asyncio.create_task(self._run(session, url, headers))
        self.connected = asyncio.Event()

    async def _run(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            self.connected.set()
            eid, data = None, []
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    eid = int(line[4:])
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    assert eid is not None
                    self.got.append((eid, json.loads("".join(data))))
                    data = []

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def test_sse_live_then_resume_with_last_event_id(tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path, watch_new_cgroups=False) as h, served(h) as base, \
                aiohttp.ClientSession() as session:
            # Only this test's workload: the events component also watches the host's real
            # cgroups, and a pressure event of some host cgroup may arrive meanwhile (seen in CI).
            url = base + "/api/v1/events/stream?container=web-1"
            first = SseReader(session, url, None)
            await first.connected.wait()
            await emit_from_thread(h, 3)
            await h.wait_for(lambda: len(first.got) >= 3)
            assert [d["fields"]["seq"] for _, d in first.got] == [0, 1, 2]
            assert [i for i, _ in first.got] == [d["id"] for _, d in first.got]
            last = first.got[-1][0]
            await first.close()
            # Missed while disconnected:
            await emit_from_thread(h, 4, start=3)
            second = SseReader(session, url, last)
            await h.wait_for(lambda: len(second.got) >= 4)
            await emit_from_thread(h, 1, etype="thawed", start=99)
            await h.wait_for(lambda: len(second.got) >= 5)
            assert [d["fields"]["seq"] for _, d in second.got] == [3, 4, 5, 6, 99]
            ids = [i for i, _ in second.got]
            assert ids == sorted(set(ids)) and ids[0] > last
            await second.close()
    asyncio.run(body())


def test_sse_subscriber_that_falls_behind_is_refilled_from_the_store(tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path, watch_new_cgroups=False) as h, served(h) as base, \
                aiohttp.ClientSession() as session:
            reader = SseReader(session, base + "/api/v1/events/stream?type=killed", None)
            await reader.connected.wait()
            # 3000 emits without yielding, and the loop held until the writer committed them
            # all: their 3000 fan-outs are then queued on the loop before the stream handler
            # runs again, more than the subscriber's queue holds. (Without the wait, the writer
            # thread's commits could interleave with the handler and never overflow it.)
            for i in range(3000):
                h.ctx.emit("killed", WHO, "", {"seq": i})
            h.ctx.store.flush()
            await h.wait_for(lambda: len(reader.got) >= 3000, timeout=30)
            assert [d["fields"]["seq"] for _, d in reader.got] == list(range(3000))
            assert h.comp._api.refills >= 1  # the refill path did run
            await reader.close()
    asyncio.run(body())


def test_list_filters_and_errors(tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path, watch_new_cgroups=False) as h, served(h) as base, \
                aiohttp.ClientSession() as session:
            await emit_from_thread(h, 5)
            h.ctx.emit("oom_kill", WHO, "", {"total": 1})
            h.ctx.emit("pids_max", None, "", {})
            await asyncio.sleep(0.05)

            async def get(q: str) -> tuple[int, Any]:
                async with session.get(base + "/api/v1/events" + q) as r:
                    return r.status, await r.json()

            status, doc = await get("?type=oom_kill")
            assert status == 200
            assert [e["type"] for e in doc["events"]] == ["oom_kill"]
            assert doc["events"][0]["severity"] == "error"
            assert doc["events"][0]["container"]["inode"] == 4242
            _, doc = await get("?container=web-1&type=killed,oom_kill&limit=2")
            assert [e["type"] for e in doc["events"]] == ["killed", "oom_kill"]
            _, doc = await get(f"?container={WHO.id[:12]}")
            assert len(doc["events"]) == 6
            _, all_doc = await get("")
            ids = [e["id"] for e in all_doc["events"]]
            _, doc = await get(f"?since={ids[2]}")
            assert [e["id"] for e in doc["events"]] == ids[3:]
            assert doc["last_id"] == ids[-1]
            status, doc = await get("?type=bogus")
            assert status == 400 and doc["exit_code"] == 2 and "bogus" in doc["error"]
            status, doc = await get("?since=x")
            assert status == 400 and "since" in doc["error"]
            status, doc = await get("?limit=0")
            assert status == 400
    asyncio.run(body())
