"""The read-only HTTP API, served on TCP and on the Unix socket. Everything comes from the
latest snapshot; nothing here reads the kernel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web

from agent.api.errors import json_error
from agent.core.component import Component
from agent.core.exit_codes import ExitCode
from agent.core.health import ComponentHealth
from agent.exporters.exposition import OPENMETRICS, TEXT, MetricsRenderer, wants_openmetrics
from agent.exporters.gzip_body import accepts_gzip
from agent.exporters.metrics import label_value
from agent.model.snapshot import Snapshot, WorkloadKind, WorkloadState

#: /healthz is 503 when the snapshot is older than this many collection intervals.
STALE_INTERVALS = 3

SnapshotGetter = Callable[[], Snapshot | None]


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON-ready values (strings made encodable)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {label_value(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return label_value(value)
    return value


def _state(frozen: bool | None, populated: bool | None) -> str:
    if frozen:
        return "frozen"
    if populated is None:
        return "-"
    return "running" if populated else "empty"


def workload_summary(w: WorkloadState) -> dict[str, Any]:
    """The identity plus the headline numbers `agentctl ls` shows."""
    i, s, r = w.identity, w.sample, w.rates
    io = s.io_totals
    return {
        **_plain(i),
        "state": _state(s.frozen, s.populated),
        "cpu_usage_usec": s.cpu.usage_usec if s.cpu else None,
        "cpu_cores": r.cpu_cores if r else None,
        "memory_bytes": s.memory.current if s.memory else None,
        "memory_working_set_bytes": s.memory.working_set if s.memory else None,
        "io_read_bytes": io[0] if io else None,
        "io_write_bytes": io[1] if io else None,
        "io_read_bytes_per_s": r.io_read_bytes_per_s if r else None,
        "io_write_bytes_per_s": r.io_write_bytes_per_s if r else None,
        "pids": s.pids.current if s.pids else None,
        "net_rx_bytes_per_s": r.net_rx_bytes_per_s if r else None,
        "net_tx_bytes_per_s": r.net_tx_bytes_per_s if r else None,
    }


def workload_detail(
    w: WorkloadState, snapshot: Snapshot, components: list[Component]
) -> dict[str, Any]:
    out = workload_summary(w)
    out["sample"] = _plain(w.sample)
    out["rates"] = _plain(w.rates) if w.rates else None
    for comp in components:
        extra = comp.describe(snapshot, w.identity.id)
        if extra:
            out[comp.name] = _plain(extra)
    return out


class ReadApi:
    def __init__(
        self,
        latest: SnapshotGetter,
        renderer: MetricsRenderer,
        components: list[Component],
        started: float,
        interval: Callable[[], float] | None = None,
        health: ComponentHealth | None = None,
    ) -> None:
        self.latest = latest
        self.health = health
        self.renderer = renderer
        self.components = components
        self.started = started
        #: The configured cycle interval (s): a snapshot older than STALE_INTERVALS of them
        #: means collection is stuck, and /healthz says so.
        self.interval = interval

    def _snapshot(self) -> Snapshot:
        snap = self.latest()
        if snap is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "no snapshot yet", "exit_code": ExitCode.UNAVAILABLE}),
                content_type="application/json",
            )
        return snap

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        snap = self._snapshot()
        om = wants_openmetrics(request.headers.get("Accept", ""))
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))

        # Rendered ahead (something scrapes): answered here. Else the rendering of the
        # snapshot happens off the event loop.
        parts = self.renderer.scrape_ready(snap, om, gzip)
        if parts is None:
            loop = asyncio.get_running_loop()
            parts = await loop.run_in_executor(None, self.renderer.scrape, snap, om, gzip)
        headers = {"Content-Type": OPENMETRICS if om else TEXT, "Vary": "Accept-Encoding"}
        if gzip:
            # ~170 kB at 1,000 workloads: joined, it goes out with the headers in one send.
            # Each send gives the GIL away, and on a busy host taking it back is the cost
            # (a send per part, 3 in all, was the largest part of a scrape on the loop).
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=b"".join(parts), headers=headers)
        # Plain, 4 MB at 1,000 workloads: sent in batches, never joined whole (a scrape adds
        # no body-sized copy to the agent's memory); the writer waits while the socket is
        # behind.
        resp = web.StreamResponse(headers=headers)
        resp.content_length = sum(map(len, parts))
        await resp.prepare(request)
        for batch in _batches(parts):
            await resp.write(batch)
        await resp.write_eof()
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        snap = self.latest()
        if snap is None:
            return web.json_response({"status": "starting"}, status=503)
        age = (time.time_ns() - snap.wall_ns) / 1e9
        stale = self.interval is not None and age > STALE_INTERVALS * self.interval()
        return web.json_response(
            {"status": "stale" if stale else "ok", "snapshot_seq": snap.seq,
             "snapshot_age_s": round(age, 3),
             "uptime_s": round(time.monotonic() - self.started, 3)},
            status=503 if stale else 200,
        )

    async def host(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        body = _plain(snap.host)
        body["workloads"] = len(snap.workloads)
        body["snapshot_seq"] = snap.seq
        body["cycle_cpu_seconds"] = snap.cycle_cpu_ns / 1e9
        if self.health is not None:
            body["components"] = self.health.as_json()
        return web.json_response(body)

    async def containers(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        kinds_q = request.query.get("kind", "")
        kinds = {k for k in kinds_q.split(",") if k} if kinds_q else None
        valid = {k.value for k in WorkloadKind}
        if kinds and not kinds <= valid:
            return json_error(f"kind must be among {', '.join(sorted(valid))}", ExitCode.USAGE)
        rows = [
            workload_summary(w)
            for w in sorted(snap.workloads.values(), key=lambda w: w.identity.cgroup)
            if kinds is None or w.identity.kind.value in kinds
        ]
        return web.json_response({"snapshot_seq": snap.seq, "wall_ns": snap.wall_ns,
                                  "containers": rows})

    async def container(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        ref = request.match_info["ref"]
        w = snap.find(ref)
        if w is None and not ref.startswith("/"):
            w = snap.find("/" + ref)
        if w is None:
            return json_error(f"no container, workload or cgroup matches {ref!r}",
                              ExitCode.NOT_FOUND)
        return web.json_response(workload_detail(w, snap, self.components))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/api/v1/host", self.host),
            web.get("/api/v1/containers", self.containers),
            web.get("/api/v1/containers/{ref:.+}", self.container),
        ]


#: Plain /metrics bodies go out in sends of about this many bytes (one per part was ~100).
SEND_BATCH = 1 << 18


def _batches(parts: Iterable[bytes]) -> Iterator[bytes]:
    batch: list[bytes] = []
    size = 0
    for part in parts:
        batch.append(part)
        size += len(part)
        if size >= SEND_BATCH:
            yield b"".join(batch)
            batch, size = [], 0
    if size:
        yield b"".join(batch)
