"""The built-in web UI: one page at `/`, its static files, and the JSON it needs beyond the API.

Every route is a GET that reads the latest snapshot, the history ring or the ledger: the page is
served on the read-only TCP port, and it has no write action (control stays on the Unix socket).

Settings ([web]): enabled (true), history_seconds (900: how far back the charts reach).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

from aiohttp import web

from agent.api.errors import json_error
from agent.api.read import workload_summary
from agent.core.component import AgentContext, Component, Setting
from agent.core.exit_codes import ExitCode
from agent.model.snapshot import Snapshot, WorkloadKind, WorkloadState
from agent.web.billing_top import top_consumers
from agent.web.history import HistoryRing, cpu_quota_cores, memory_limit_bytes

#: Static files by URL name: (package file, media type).
ASSETS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "charts.js": ("charts.js", "text/javascript; charset=utf-8"),
})
#: The page loads only its own files and talks only to its own origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _window(v: Any) -> str | None:
    return None if 60 <= v <= 86400 else "must be between 60 and 86400 seconds"


def _read_asset(name: str) -> bytes:
    return resources.files("agent.web").joinpath("static", name).read_bytes()


#: The summary fields the table shows (the page fetches them every cycle: nothing more).
TABLE_FIELDS = ("id", "name", "cgroup", "kind", "runtime", "state", "cpu_cores", "memory_bytes",
                "io_read_bytes_per_s", "io_write_bytes_per_s", "net_rx_bytes_per_s",
                "net_tx_bytes_per_s", "pids")


def table_row(w: WorkloadState) -> dict[str, Any]:
    """What one row of the page's table shows: the API's summary plus limits and image."""
    summary = workload_summary(w)
    row = {k: summary[k] for k in TABLE_FIELDS}
    row["memory_limit_bytes"] = memory_limit_bytes(w)
    row["cpu_quota_cores"] = cpu_quota_cores(w)
    row["image"] = w.identity.labels.get("image", "")
    return row


class WebComponent(Component):
    name = "web"
    settings: Mapping[str, Setting] = MappingProxyType({
        "enabled": Setting(bool, True, "serve the web UI at / on the HTTP port"),
        "history_seconds": Setting((int, float), 900, "seconds of history kept for the charts",
                                   _window),
    })

    def __init__(self) -> None:
        self.ctx: AgentContext | None = None
        self.enabled = True
        self.ring = HistoryRing(900, 5)
        #: The ring is written in a worker thread and read by the API's threads.
        self._ring_lock = threading.Lock()
        self.pages: dict[str, tuple[bytes, str]] = {}

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        conf = ctx.section(self.name)
        self.enabled = bool(conf.get("enabled", True))
        self.ring = HistoryRing(float(conf.get("history_seconds", 900)), self._interval())
        if self.enabled:
            # Read once: the files are small and served from memory after that.
            self.pages = {"index.html": (_read_asset("index.html"), "text/html; charset=utf-8")}
            self.pages.update({k: (_read_asset(f), t) for k, (f, t) in ASSETS.items()})

    def _interval(self) -> float:
        return float(self.ctx.config.get("interval", 5)) if self.ctx else 5.0

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        if not self.enabled:
            return
        # ~10 ms at 1,000 workloads: in a thread, so /metrics and /healthz answer meanwhile.
        await asyncio.to_thread(self._record, snapshot)

    def _record(self, snapshot: Snapshot) -> None:
        with self._ring_lock:
            self.ring.resize(self._interval())
            self.ring.record(snapshot)

    def _ring_get(self, *refs: str) -> dict[str, object] | None:
        with self._ring_lock:
            for ref in refs:
                body = self.ring.get(ref)
                if body is not None:
                    return body
        return None

    def routes(self) -> list[web.RouteDef]:
        if not self.enabled:
            return []
        return [
            web.get("/", self._index),
            web.get("/ui/{name}", self._asset),
            web.get("/api/v1/ui/workloads", self._workloads),
            web.get("/api/v1/history/{ref:.+}", self._history),
            web.get("/api/v1/billing/top", self._billing_top),
        ]

    # -- handlers ----------------------------------------------------------------------
    def _file(self, name: str) -> web.Response:
        body, media = self.pages[name]
        return web.Response(body=body, headers={
            "Content-Type": media, "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            return json_error(f"no such file {name!r}", ExitCode.NOT_FOUND)
        return self._file(name)

    def _snapshot(self) -> Snapshot | None:
        return self.ctx.latest() if self.ctx else None

    async def _workloads(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        if snap is None:
            return json_error("no snapshot yet", ExitCode.UNAVAILABLE)
        kinds = {k for k in request.query.get("kind", "").split(",") if k}
        valid = {k.value for k in WorkloadKind}
        if not kinds <= valid:
            return json_error(f"kind must be among {', '.join(sorted(valid))}", ExitCode.USAGE)
        rows = await asyncio.to_thread(
            lambda: [table_row(w) for w in snap.workloads.values()
                     if not kinds or w.identity.kind.value in kinds])
        return web.json_response({"snapshot_seq": snap.seq, "wall_ns": snap.wall_ns,
                                  "interval_s": self._interval(), "total": len(snap.workloads),
                                  "snapshot_age_s": (time.time_ns() - snap.wall_ns) / 1e9,
                                  "workloads": rows})

    async def _history(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        snap = self._snapshot()
        found = snap.find(ref) if snap else None
        if found is None and snap is not None and not ref.startswith("/"):
            found = snap.find("/" + ref)
        # A workload gone from the snapshot keeps its history for the window: look up by id.
        wid = found.identity.id if found else ref
        body = await asyncio.to_thread(self._ring_get, wid, "/" + ref)
        if body is None:
            return json_error(f"no history for {ref!r}", ExitCode.NOT_FOUND)
        return web.json_response(body)

    async def _billing_top(self, request: web.Request) -> web.Response:
        raw = request.query.get("n", "10")
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            return json_error(f"n must be an integer from 1 to 100, got {raw!r}", ExitCode.USAGE)
        ledger = getattr(self.ctx.components.get("ledger") if self.ctx else None, "ledger", None)
        if ledger is None:
            return json_error("the ledger is not running", ExitCode.UNAVAILABLE)
        body = await asyncio.to_thread(top_consumers, ledger, int(time.time()), int(raw))
        return web.json_response(body)
