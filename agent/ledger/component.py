"""The ledger as an agent component: fed every snapshot and every final sample, serves exports.

Settings ([ledger]): period_seconds (3600 = UTC hours), grace_seconds (120: how long after its
end a period stays open for late samples), host_id (default: /etc/machine-id, else hostname).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.api.errors import json_error
from agent.core.component import AgentContext, Component, Setting
from agent.core.exit_codes import ExitCode
from agent.ledger.export import ExportError, check_format, check_group_by
from agent.ledger.export import parse_time as parse_export_time
from agent.ledger.export_relay import ExportJob, ExportRunner
from agent.ledger.ledger import Ledger
from agent.ledger.storage import LedgerStorage
from agent.model.snapshot import Snapshot, WorkloadIdentity
from collectors.samples import CgroupSample

log = logging.getLogger("agent.ledger")

#: Far enough in the future to mean "no upper bound" (year 9999).
END_OF_TIME = 253402300799


def _at_least(n: int) -> Any:
    return lambda v: None if v >= n else f"must be at least {n}"


def read_boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def default_host_id() -> str:
    try:
        mid = Path("/etc/machine-id").read_text().strip()
    except OSError:
        mid = ""
    return mid or socket.gethostname()


class LedgerComponent(Component):
    name = "ledger"
    settings: Mapping[str, Setting] = MappingProxyType({
        "period_seconds": Setting(int, 3600, "length of a billing period (UTC-aligned)",
                                  _at_least(1)),
        "grace_seconds": Setting(int, 120, "seconds after a period ends before it closes",
                                 _at_least(0)),
        "host_id": Setting(str, "", "host id in exports (default: machine id, else hostname)"),
    })

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self.boot_id = ""
        #: Final samples wait here for the ledger's own thread: the caller (the event loop)
        #: must not wait for the ledger lock, which a cycle's transaction holds.
        self._finals: queue.SimpleQueue[tuple[WorkloadIdentity, CgroupSample] | None] = (
            queue.SimpleQueue())
        self._final_writer: threading.Thread | None = None
        #: Billing exports, each in a child process (agent.ledger.export_relay says why).
        self._exports = ExportRunner()

    async def start(self, ctx: AgentContext) -> None:
        conf = ctx.section(self.name)
        self.boot_id = read_boot_id()
        host_id = str(conf.get("host_id") or "") or default_host_id()
        storage = await asyncio.to_thread(LedgerStorage, ctx.store)
        self.ledger = await asyncio.to_thread(
            Ledger, storage, host_id=host_id,
            period_seconds=int(conf.get("period_seconds", 3600)),
            grace_seconds=int(conf.get("grace_seconds", 120)),
        )
        self._final_writer = threading.Thread(target=self._write_finals, name="ledger-finals",
                                              daemon=True)
        self._final_writer.start()
        ctx.health.watch_thread(self.name, "ledger-finals", self._final_writer.is_alive)
        ctx.final_sample_listeners.append(self._on_final)

    def _on_final(self, who: WorkloadIdentity, sample: CgroupSample) -> None:
        self._finals.put((who, sample))

    def _write_finals(self) -> None:
        while True:
            item = self._finals.get()
            if item is None or self.ledger is None:
                return
            who, sample = item
            try:
                self.ledger.observe_final(who, sample, self.boot_id)
            except Exception:
                log.exception("ledger: final sample of %s not recorded", who.cgroup)

    def drain_finals(self, timeout: float = 5.0) -> None:
        """Write the queued final samples and stop the writer thread."""
        if self._final_writer is not None:
            self._finals.put(None)
            self._final_writer.join(timeout)
            self._final_writer = None

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        if self.ledger is None:
            return
        try:
            await asyncio.to_thread(self.ledger.observe_snapshot, snapshot,
                                    self.boot_id or None)
        except Exception:
            log.exception("ledger: snapshot %d not recorded", snapshot.seq)

    async def stop(self) -> None:
        # Close what is due by the wall clock (the next start would do it too).
        await asyncio.to_thread(self.drain_finals)
        if self.ledger is not None:
            try:
                await asyncio.to_thread(self.ledger.flush_idle)
                await asyncio.to_thread(self.ledger.close_due, time.time_ns())
            except Exception:
                log.exception("ledger: closing periods at stop failed")

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        led = self.ledger
        if led is None:
            return []
        out: list[Metric] = []
        for name, key, doc in (
            ("container_agent_ledger_cycles_total", "cycles",
             "Collection cycles recorded in the ledger"),
            ("container_agent_ledger_final_samples_total", "final_samples",
             "Final samples (read at populated 0) recorded"),
            ("container_agent_ledger_commit_failures_total", "commit_failures",
             "Cycles whose ledger transaction failed (retried next cycle)"),
            ("container_agent_ledger_resets_total", "resets",
             "Counters seen going backwards within one incarnation"),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], led.stats[key])
            out.append(fam)
        out.append(GaugeMetricFamily("container_agent_ledger_open_rows",
                                     "Usage rows of periods not closed yet",
                                     value=led.open_row_count))
        out.append(GaugeMetricFamily(
            "container_agent_ledger_closed_before_seconds",
            "Periods ending at or before this Unix time are closed", value=led.closed_before))
        return out

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/billing", self._billing)]

    async def _billing(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            start = parse_export_time(q["from"], "from") if q.get("from") else 0
            end = parse_export_time(q["to"], "to") if q.get("to") else END_OF_TIME
            fmt = check_format(q.get("format") or "json")
            group_by = check_group_by(q.get("group_by"))
            include_open = q.get("open", "") in ("1", "true", "yes")
            if end <= start:
                raise ExportError("to must be after from")
        except ExportError as e:
            return json_error(str(e), ExitCode.USAGE)
        if self.ledger is None:
            return json_error("the ledger is not running", ExitCode.UNAVAILABLE)
        ledger = self.ledger
        if include_open:  # open rows as of now, idle stretches included
            await asyncio.to_thread(ledger.flush_idle)
        # Rows of periods ending at or before this instant are final (corrections aside);
        # read before the export's own read, so it holds for every row the export sees.
        headers = {"X-Ledger-Closed-Before": str(ledger.closed_before)}
        job = ExportJob(ledger.storage.store.path, start, end, fmt, group_by, include_open)
        return await self._exports.respond(request, job, headers)
