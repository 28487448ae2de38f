"""Rendering /metrics: the snapshot's families are rendered at most once per snapshot: right
after its cycle while something scrapes (within RENDER_AHEAD_WINDOW_S), so a scrape only sends
bytes; with no scraper, by the first scrape that asks for it (an agent nobody scrapes renders
nothing). Later scrapes of the same snapshot reuse the bytes. The agent's own small, live
families (component health, answer times, events and deliveries counted) are rendered with the
snapshot when it is rendered ahead (as the cycle left them: one interval old at most), else by
the scrape.

Content negotiation: OpenMetrics when the client asks for it, Prometheus text otherwise; gzip
when the client accepts it (the snapshot's part compressed once, agent/exporters/gzip_body.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psutil
from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format

from agent.core.component import Component
from agent.exporters.cadvisor import cadvisor_render
from agent.exporters.family_text import EOF, render_families
from agent.exporters.gzip_body import GzipPrefix
from agent.exporters.metrics import (
    DEFAULT_OPTIONS,
    MetricsOptions,
    RenderedFamily,
    WorkloadRowCaches,
    agent_families,
    render_workload_families,
)
from agent.model.snapshot import Snapshot
from collectors.open_dirs import open_fd_count

log = logging.getLogger("agent.metrics")

OPENMETRICS = om_format.CONTENT_TYPE_LATEST
TEXT = text_format.CONTENT_TYPE_LATEST


def metrics_options(config: Mapping[str, Any]) -> MetricsOptions:
    """MetricsOptions from the configuration's metrics_* keys."""
    return MetricsOptions(
        identity_labels=bool(config["metrics_identity_labels"]),
        groups=frozenset(config["metrics_groups"]),
        plain_cgroups=bool(config["metrics_plain_cgroups"]),
    )


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


#: While something has scraped within this many seconds, each snapshot is rendered right after
#: its cycle (render_ahead), and scrapes only send bytes; with no scraper, nothing is rendered.
RENDER_AHEAD_WINDOW_S = 120.0


def _within_window(then_ns: int | None, now_ns: int) -> bool:
    """Whether a scrape at `then_ns` (None: never) is recent enough to render ahead for."""
    return then_ns is not None and now_ns - then_ns <= RENDER_AHEAD_WINDOW_S * 1e9


def _snapshot_parts(families: Iterable[RenderedFamily], tails: Mapping[bool, bytes],
                    openmetrics: bool) -> list[bytes]:
    """The body's parts that depend only on the snapshot, in order: each family's header and
    lines, then the agent's and the per-cycle components' families."""
    parts: list[bytes] = []
    for f in families:
        parts += (f.om_header if openmetrics else f.text_header, f.lines)
    parts.append(tails[openmetrics])
    return parts


class MetricsRenderer:
    """Renders a snapshot once, for both formats: right after its cycle while something scrapes
    (render_ahead), else on the first scrape that asks for it.

    Per snapshot (in a worker thread: the API stays responsive): the
    workload families, the agent's own, and the families of components whose metrics depend
    only on the snapshot (`Component.snapshot_metrics`). Per scrape: only the other
    components' small, live counters (events, deliveries). A snapshot amended between cycles
    (a cgroup appeared) keeps its sequence number and is not rendered again: /metrics shows
    the last collection cycle, the JSON API shows amendments at once.
    """

    def __init__(
        self,
        cadvisor: bool,
        components: Sequence[Component] = (),
        options: MetricsOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.cadvisor = cadvisor
        self.options = options
        self.components = list(components)
        self._lock = threading.Lock()
        self._families: list[RenderedFamily] = []
        self._tails: dict[bool, bytes] = {}
        #: The latest snapshot compressed, per format (OpenMetrics?), with its sequence number:
        #: kept across cycles, so a gzip scrape can be answered from it while the next
        #: snapshot is being compressed ahead (Prometheus sends gzip; see scrape()).
        self._zipped: dict[bool, tuple[int, GzipPrefix]] = {}
        #: time.monotonic_ns() of the latest gzip scrape, per format: render_ahead compresses
        #: for the formats asked for within RENDER_AHEAD_WINDOW_S.
        self._zip_scraped_ns: dict[bool, int] = {}
        #: Each workload's rendered lines, reused while its values are unchanged.
        self._rows = WorkloadRowCaches()
        #: Sequence number of the snapshot rendered (None: nothing rendered).
        self._seq: int | None = None
        #: Snapshots rendered (each at most once; tests and benchmarks read it).
        self.renders = 0
        #: Renderings compressed (each at most once per format).
        self.compressions = 0
        #: Gzip scrapes answered with the last cycle's body while the newest was compressed.
        self.stale_answers = 0
        #: The agent's live families (component health, answer times), rendered with each
        #: snapshot ahead, or by a scrape of a snapshot not rendered ahead.
        self.live_families: Callable[[], list[Metric]] = lambda: []
        #: time.monotonic_ns() of the latest scrape (None: never scraped).
        self.scraped_ns: int | None = None
        #: time.monotonic_ns() of the latest scrape, per format (OpenMetrics?): render_ahead
        #: renders the live part for the formats asked for within RENDER_AHEAD_WINDOW_S.
        self._format_scraped_ns: dict[bool, int] = {}
        #: Per format: the sequence number of the snapshot whose live part was rendered ahead,
        #: that part, and for gzip scrapers the compressed body it ends and its end.
        self._live_ahead: dict[bool, tuple[int, bytes, GzipPrefix | None, bytes]] = {}

    def _component_families(self, snapshot: Snapshot, per_cycle: bool) -> list[Metric]:
        out: list[Metric] = []
        for comp in self.components:
            if comp.snapshot_metrics is not per_cycle:
                continue
            try:
                out.extend(comp.metric_families(snapshot))
            except Exception:
                log.exception("component %s failed to export metrics", comp.name)
        return out

    def prepare(self, snapshot: Snapshot) -> None:
        """A new snapshot is about to be published: forget the last rendering (its bytes
        are not kept until the next scrape; its compressed body, ~170 kB, is kept for gzip
        scrapes until the new one is compressed, and dropped once no gzip scrape of its format
        came within RENDER_AHEAD_WINDOW_S). Rendering waits for a scrape."""
        now = time.monotonic_ns()
        with self._lock:
            if self._seq != snapshot.seq:
                self._families, self._tails, self._seq = [], {}, None
            for om, zip_ns in list(self._zip_scraped_ns.items()):
                if not _within_window(zip_ns, now):  # that gzip scraper is gone
                    self._zipped.pop(om, None)
                    del self._zip_scraped_ns[om]

    @property
    def kept_bodies(self) -> int:
        """Compressed bodies kept for gzip scrapers (one per format scraped in the window)."""
        return len(self._zipped)

    def _render_snapshot(self, snapshot: Snapshot) -> None:
        others = agent_families(snapshot)
        others.extend(self_families())
        others.extend(self._component_families(snapshot, per_cycle=True))
        families = render_workload_families(snapshot, self.options, self._rows)
        if self.cadvisor:
            families += cadvisor_render(snapshot, self._rows.cadvisor)
        self._tails = {om: render_families(others, om) for om in (False, True)}
        self._families = families
        self._seq = snapshot.seq
        self.renders += 1

    def _render_once(self, snapshot: Snapshot) -> None:
        """Render `snapshot` unless it or a newer one is rendered (call with the lock held: one
        render per snapshot, also for concurrent scrapes). A scrape that took the published
        snapshot just before a cycle replaced it gets the newer rendering, not a second render
        of the older (100+ ms at 1,000 workloads, behind the lock)."""
        if self._seq is None or self._seq < snapshot.seq or not self._tails:
            self._render_snapshot(snapshot)

    def _rendered(self, snapshot: Snapshot) -> tuple[list[RenderedFamily], dict[bool, bytes]]:
        with self._lock:
            self._render_once(snapshot)
            return self._families, self._tails

    def _gzipped(self, snapshot: Snapshot, openmetrics: bool) -> GzipPrefix:
        """The snapshot's part of the body in `openmetrics` format, compressed once."""
        with self._lock:
            seq_zipped = self._zipped.get(openmetrics)
            if seq_zipped is not None and seq_zipped[0] >= snapshot.seq:
                return seq_zipped[1]  # this snapshot's, or a newer one's (see _render_once)
            self._render_once(snapshot)
            assert self._seq is not None
            zipped = GzipPrefix(_snapshot_parts(self._families, self._tails, openmetrics))
            self._zipped[openmetrics] = (self._seq, zipped)
            self.compressions += 1
            return zipped

    def render_ahead(self, snapshot: Snapshot, now_ns: int | None = None) -> bool:
        """Render `snapshot` now if something scraped within RENDER_AHEAD_WINDOW_S: a first
        scrape then only sends bytes (1,000 workloads: ~9 against ~23 ms here). Called after
        the cycle's components are done with the snapshot; blocking: from a worker thread."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if not _within_window(self.scraped_ns, now):
            return False
        self._rendered(snapshot)
        zipped = {om: self._gzipped(snapshot, om)
                  for om, zip_ns in list(self._zip_scraped_ns.items())
                  if _within_window(zip_ns, now)}
        for om, ns in list(self._format_scraped_ns.items()):
            if _within_window(ns, now):
                self._render_live_ahead(snapshot, om, zipped.get(om))
            else:  # that scraper is gone
                self._live_ahead.pop(om, None)
                del self._format_scraped_ns[om]
        return True

    def _render_live_ahead(self, snapshot: Snapshot, openmetrics: bool,
                           zipped: GzipPrefix | None) -> None:
        """The live part too, as the cycle left it: a scrape of this snapshot then only sends
        bytes, and the event loop renders nothing (its ~1.3 ms of Python per scrape, each
        slice of it waiting for the GIL and a CPU on a busy host, was most of a scrape's time
        there). Its counters are then as old as the snapshot's, one interval at most."""
        try:
            live = self._render_live(snapshot, openmetrics)
        except RuntimeError:  # a component's map changed under this thread: a scrape renders it
            log.debug("live families of snapshot %d left to the scrape", snapshot.seq)
            self._live_ahead.pop(openmetrics, None)
            return
        end = zipped.finish(live) if zipped is not None else b""
        self._live_ahead[openmetrics] = (snapshot.seq, live, zipped, end)

    def scrape(self, snapshot: Snapshot, openmetrics: bool, gzip: bool = False) -> list[bytes]:
        """The /metrics body as parts, to be sent one after another: a scrape then holds no
        copy of the whole body (4 MB at 1,000 workloads) beside the rendering. With `gzip`,
        two parts: the snapshot's part compressed once, and this scrape's end of the stream;
        while render_ahead works on a new snapshot for gzip scrapers, they get the one before
        it (one cycle old, never more). Blocking: call it from a worker thread, after
        scrape_ready found the snapshot's part not ready."""
        ready = self.scrape_ready(snapshot, openmetrics, gzip)
        if ready is not None:
            return ready
        self._scraped(openmetrics, gzip, time.monotonic_ns())
        if gzip:
            zipped = self._gzipped(snapshot, openmetrics)
            return [zipped.head, zipped.finish(self._live(snapshot, openmetrics))]
        families, tails = self._rendered(snapshot)
        return [*_snapshot_parts(families, tails, openmetrics), self._live(snapshot, openmetrics)]

    def scrape_ready(self, snapshot: Snapshot, openmetrics: bool, gzip: bool = False
                     ) -> list[bytes] | None:
        """scrape()'s answer if the snapshot's part is rendered (and compressed, for `gzip`)
        already, as render_ahead leaves it while something scrapes (the live families too,
        else rendered here: ~1.3 ms), so the event loop answers itself. A hop to a worker thread and
        back is two wake-ups, each waiting for a CPU and the GIL on a busy host (up to 11 ms
        each, seen at 1,000 cgroups under churn). None, waiting for nothing: not ready."""
        now = time.monotonic_ns()
        if gzip:
            last = self._zipped.get(openmetrics)
            if last is None:
                return None
            if last[0] < snapshot.seq:
                compressing = _within_window(self._zip_scraped_ns.get(openmetrics), now)
                if not (compressing and last[0] == snapshot.seq - 1):
                    return None
                # render_ahead is compressing this snapshot (gzip scrapes came within the
                # window): the last cycle's body now, rather than a wait behind that work
                # (the p99 of a scrape at 1,000 workloads), ended as rendered with it.
                self.stale_answers += 1
            self._scraped(openmetrics, gzip, now)
            live = self._live_ahead.get(openmetrics)
            if live is not None and live[2] is last[1]:  # that body's own end, rendered ahead
                return [last[1].head, live[3]]
            return [last[1].head, last[1].finish(self._live(snapshot, openmetrics))]
        if not self._lock.acquire(blocking=False):  # a rendering under way
            return None
        try:
            if self._seq is None or self._seq < snapshot.seq or not self._tails:
                return None
            families, tails = self._families, self._tails
        finally:
            self._lock.release()
        self._scraped(openmetrics, gzip, now)
        return [*_snapshot_parts(families, tails, openmetrics), self._live(snapshot, openmetrics)]

    def _scraped(self, openmetrics: bool, gzip: bool, now_ns: int) -> None:
        """A scrape in this format came: render_ahead renders for it while it keeps coming."""
        self.scraped_ns = self._format_scraped_ns[openmetrics] = now_ns
        if gzip:
            self._zip_scraped_ns[openmetrics] = now_ns

    def _live(self, snapshot: Snapshot, openmetrics: bool) -> bytes:
        """The live part of a scrape of `snapshot`: the one rendered ahead with it, or now."""
        ahead = self._live_ahead.get(openmetrics)
        if ahead is not None and ahead[0] == snapshot.seq:
            return ahead[1]
        return self._render_live(snapshot, openmetrics)

    def _render_live(self, snapshot: Snapshot, openmetrics: bool) -> bytes:
        """The components' small, live counters, and OpenMetrics' end."""
        live = render_families(self._component_families(snapshot, per_cycle=False)
                       + self.live_families(), openmetrics)
        return live + EOF if openmetrics else live


#: psutil reads /proc/self once per cycle (oneshot): ~45 µs against ~27 µs by hand, for one
#: maintained reader of the agent's own CPU, memory and fds instead of our /proc parsing.
_SELF = psutil.Process()


def self_families() -> list[Metric]:
    """The agent's own CPU, memory and fds, read once per cycle (cheap: no /proc/self/fd walk
    at scrape time, where thousands of kept cgroup fds would make it slow)."""
    with _SELF.oneshot():
        times = _SELF.cpu_times()
        mem = _SELF.memory_info()
    fd_count = open_fd_count()
    cpu = CounterMetricFamily("container_agent_process_cpu_seconds_total",
                              "CPU time the agent has used (user + system)")
    cpu.add_metric([], times.user + times.system)
    rss = GaugeMetricFamily("container_agent_process_resident_memory_bytes", "Agent RSS")
    rss.add_metric([], mem.rss)
    vms = GaugeMetricFamily("container_agent_process_virtual_memory_bytes", "Agent VMS")
    vms.add_metric([], mem.vms)
    fds = GaugeMetricFamily("container_agent_process_open_fds", "File descriptors open")
    fds.add_metric([], fd_count)
    return [cpu, rss, vms, fds]
