"""The events capability: the event log, kernel-driven lifecycle and limit events, sinks.

start() replaces ctx.emit, so every component's events land in the log. Lifecycle comes from
the kernel first (IN_CREATE on the tree, `populated` in cgroup.events) and from the snapshots as
a safety net (a workload that appears or vanishes between cycles); one incarnation gets one
started/stopped pair per run whichever saw it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from agent.core.component import AgentContext, Component
from agent.core.loop_post import poster_for
from agent.core.store_writer import StoreClosed, store_families
from agent.events.api import EventsApi, Hub
from agent.events.lifecycle import (
    final_fields,
    final_of,
    identify,
    mirrors_children,
    net_totals,
    nothing_ran,
    throttle_episode,
)
from agent.events.limit_events import LimitEvents
from agent.events.model import Event, EventContainer, EventType, severity_for
from agent.events.poll_scope import limited_subtrees
from agent.events.rmdir_final import RmdirFinals
from agent.events.settings import SETTINGS
from agent.events.sinks import Sink, build_sinks
from agent.events.store import EventLog
from agent.events.unseen import unseen_end
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.final_read import latency_family, reads_family, recent_latency_family
from agent.kernel.final_read_process import FinalReadProcess
from agent.kernel.final_reads import FinalReads, start_final_reads
from agent.kernel.watched import NoListener, PollScope, PsiTrigger, WatchedCgroup
from agent.model.recent_keys import RecentKeys
from agent.model.snapshot import Snapshot, WorkloadIdentity, WorkloadState
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("agent.events")

#: Removed incarnations remembered (an incarnation, path and inode, never comes back): a
#: snapshot is at most a few cycles old, 1,024 covers 20 s of 50 removals a second.
GONE_KEPT = 1024
#: A snapshot's workloads are compared this many at a time, the event loop let go between.
YIELD_EVERY = 256
#: Retention also runs every this many events.
_PRUNE_EVERY = 5000


def _inode(watcher: CgroupWatcher | None, path: str) -> int | None:
    if watcher is None:
        return None
    try:
        return os.stat(watcher.abs_path(path)).st_ino
    except OSError:
        return None


class EventsComponent(Component):
    name = "events"
    settings = SETTINGS

    def __init__(self) -> None:
        self.ctx: AgentContext | None = None
        self.log: EventLog | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub = Hub()
        self.sinks: list[Sink] = []
        self.watcher: CgroupWatcher | None = None
        self.final_reads: FinalReads | None = None
        self.rmdir = RmdirFinals()
        self._own_watcher = False
        #: Final reads under way per incarnation, and the incarnations removed meanwhile.
        self._final_pending: Counter[tuple[str, int]] = Counter()
        self._gone_pending: set[tuple[str, int]] = set()
        self._pending_lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._running: dict[tuple[str, int], bool] = {}
        #: Incarnations whose directory is gone (the latest GONE_KEPT): a snapshot collected
        #: before the rmdir and published after it must not start them again.
        self._gone: RecentKeys[tuple[str, int]] = RecentKeys(GONE_KEPT)
        self._usage: dict[tuple[str, int], int] = {}
        self._throttled: set[tuple[str, int]] = set()
        self._prev: Snapshot | None = None
        self.limits = LimitEvents(self.emit)
        self._tasks: list[asyncio.Task[None]] = []
        self._api = EventsApi(self._event_log, self.hub, 15.0)

    def _event_log(self) -> EventLog:
        if self.log is None:
            raise RuntimeError("events component not started")
        return self.log

    async def start(self, ctx: AgentContext) -> None:
        cfg = ctx.section(self.name)
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.log = await asyncio.to_thread(EventLog, ctx.store)
        self.hub.last_id = await asyncio.to_thread(self.log.last_id)
        self._api.heartbeat_s = float(cfg.get("heartbeat_s", 15))
        watcher = ctx.watcher
        self._own_watcher = watcher is None
        if watcher is None:  # no daemon (a test's context): a watch of our own
            watcher = CgroupWatcher(ctx.layout, identify)
        realtime = bool(cfg.get("final_read_realtime", True))
        forward = bool(cfg.get("final_read_forwards_inotify", True))
        final_reads = await asyncio.to_thread(
            start_final_reads, ctx.layout, ctx.reader or CgroupReader(ctx.layout),
            bool(cfg.get("final_read_process", True)), realtime,
            watcher.ino.fd if forward else None)
        self.final_reads = final_reads
        ctx.host_facts["final_cpu_at_rmdir"] = await asyncio.to_thread(
            self.rmdir.open, ctx.layout, bool(cfg.get("rmdir_probe", True)))
        self._prune()
        self.sinks = build_sinks({**{k: s.default for k, s in SETTINGS.items()}, **cfg})
        for sink in self.sinks:
            sink.start()
        ctx.emit = self.emit
        psi = PsiTrigger(
            int(cfg.get("some_stall_us", 150_000)), int(cfg.get("window_us", 2_000_000)),
            tuple(str(r) for r in cfg.get("pressure_resources", ("cpu", "memory", "io"))),
        )
        watcher.listener = self
        watcher.on_emptied = self._submit_final
        # The rmdir probe keeps the exact CPU of a cgroup removed at once: no need to wait,
        # at empty, for the exiting task's last charge before asking for the final read.
        watcher.settle_at_empty = self.rmdir.probe is None
        watcher.psi = psi
        watcher.poll_interval_s = float(cfg.get("poll_interval_s", 0.5))
        watcher.follow_new = bool(cfg.get("watch_new_cgroups", True))
        self.watcher = watcher
        if self._own_watcher:
            watcher.start(self.loop)
        if isinstance(final_reads, FinalReadProcess) and forward:
            # After the listener is set: the process reads the watch's notices from here on.
            await asyncio.to_thread(watcher.forward_inotify, final_reads)
        self._tasks.append(ctx.health.spawn(self.name, self._prune_forever(), name="prune"))
        ctx.health.watch_thread(self.name, "final-read", final_reads.alive)
        self.emit(EventType.AGENT_STARTED, None, "", {"pid": os.getpid()})

    async def stop(self) -> None:
        self.emit(EventType.AGENT_STOPPED, None, "", {"pid": os.getpid()})
        if self.log is not None:  # committed, then its fan-out (queued by the writer) runs
            await asyncio.to_thread(self.log.store.flush)
        await asyncio.sleep(0)
        for task in self._tasks:
            task.cancel()
        if self.watcher is not None:
            if self._own_watcher:
                self.watcher.close()
            else:
                for path in list(self.watcher.cgroups):
                    self.watcher.unwatch(path)
                self.watcher.listener = NoListener()
                self.watcher.on_emptied = None
            self.watcher = None
        if self.final_reads is not None:
            await asyncio.to_thread(self.final_reads.close)
            if self.ctx is not None and self.final_reads.reader is not self.ctx.reader:
                self.final_reads.reader.close()  # its own (no daemon's reader to share)
            self.final_reads = None
        self.rmdir.close()
        self.hub.close()
        await asyncio.gather(*(s.stop() for s in self.sinks), return_exceptions=True)

    def routes(self) -> list[web.RouteDef]:
        return self._api.routes()

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "container_agent_events_total", "Events emitted since the agent started, by type",
            labels=["type"],
        )
        for etype, n in sorted(self.counts.items()):
            events.add_metric([etype], n)
        dropped = CounterMetricFamily(
            "container_agent_event_deliveries_dropped_total",
            "Events a sink never received (queue full or retries exhausted)", labels=["sink"],
        )
        for sink in self.sinks:
            dropped.add_metric([sink.kind], sink.dropped)
        out: list[Metric] = [events, dropped]
        if self.log is not None:  # the store's writer carries the events: its health here
            out.extend(store_families(self.log.store.writer))
        if self.final_reads is not None:
            out.append(reads_family(self.final_reads.read_counts()))
            out.append(latency_family(self.final_reads.latency))
            out.append(recent_latency_family(self.final_reads.latency))
        return out

    def emit(
        self, etype: str, who: WorkloadIdentity | None, severity: str,
        fields: Mapping[str, object],
    ) -> None:
        if self.log is None:
            return
        if etype in (EventType.FROZEN, EventType.THAWED) and who is not None and (
            fields.get("source") != "kernel"
        ):
            self.limits.control_said(who.cgroup, str(etype))
        if who is not None and self.ctx is not None:
            who = self.ctx.enrich_identity(who)  # the runtime's name, even before a cycle ran
        container = EventContainer.of(who) if who is not None else None
        # Queued to the store's writer: never waits here (often the event loop). Published
        # once committed, with its row id, in id order (see _committed).
        if not self.log.enqueue(str(etype), container, severity_for(etype, severity), fields,
                                time.time_ns(), self._committed):
            n = self.log.store.writer.dropped
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th... drop: no log storm under overload
                log.warning("event %s dropped: the store's write queue is full (%d so far)",
                            etype, n)

    def _committed(self, event: Event) -> None:
        """In the store's writer thread, after the commit: count and publish the event."""
        self.counts[event.type] += 1
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            poster = poster_for(loop)
            poster.post(self._fanout, event)
            if event.id % _PRUNE_EVERY == 0:  # a storm between two periodic prunes
                poster.post(self._prune)

    def _fanout(self, event: Event) -> None:
        self.hub.publish(event)
        for sink in self.sinks:
            sink.offer(event)

    def on_populated(self, cg: WatchedCgroup) -> None:
        """A start. (An emptying goes to _submit_final, whose read's result stops it.)"""
        key = (cg.path, cg.inode)
        if mirrors_children(cg) or self._running.get(key):
            return
        self._running[key] = True
        self.emit(EventType.CONTAINER_STARTED, cg.identity, "", {"source": "kernel"})

    def _submit_final(self, cg: WatchedCgroup) -> None:
        """In the watch thread, the moment the cgroup is seen empty: the runtime may rmdir it
        any moment now, so the read goes at once to the final reads (their process, or the
        final-read thread)."""
        reads, loop = self.final_reads, self.loop
        if reads is None or loop is None or mirrors_children(cg):
            return
        key = (cg.path, cg.inode)
        at_empty = cg.at_empty
        if nothing_ran(at_empty, self._usage.get(key, 0)) and not self._running.get(key):
            return  # empty since it was made (or since its last stop): nothing to read
        # Every notification gets its read (a later one may see a life the earlier missed);
        # a read with nothing new behind it is dropped in _emptied.
        with self._pending_lock:
            self._final_pending[key] += 1

        def deliver(sample: CgroupSample) -> None:
            until = time.monotonic() + self.rmdir.wait_s
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                poster_for(loop).post(self._after_read, cg, sample, at_empty, until)

        reads.submit(cg.path, cg.notified_ns or time.monotonic_ns(), deliver, at_empty)

    def _after_read(self, cg: WatchedCgroup, sample: CgroupSample,
                    at_empty: CgroupSample | None, until: float) -> None:
        """On the loop: a read that found the cgroup removed takes the CPU its rmdir kept,
        which the tracepoint may store a moment after the files went, so it is looked for
        again until `until`. Not where final reads run: the reads queued behind it would
        wait (a second read of a life, whose rmdir value the first took, waited the whole
        window: at 50 lives/s the queue grew to p50 0.4 s)."""
        if sample.vanished or sample.cpu is None:
            kept = self.rmdir.sample(cg)
            if kept is None and self.rmdir.probe is not None and time.monotonic() < until:
                assert self.loop is not None
                self.loop.call_later(self.rmdir.poll_s, self._after_read, cg, sample, at_empty,
                                     until)
                return
            at_empty = kept or at_empty
        self._after_final(cg, sample, at_empty)

    def _after_final(self, cg: WatchedCgroup, sample: CgroupSample,
                     at_empty: CgroupSample | None) -> None:
        key = (cg.path, cg.inode)
        with self._pending_lock:
            self._final_pending[key] -= 1
            if self._final_pending[key] <= 0:
                del self._final_pending[key]
        try:
            self._emptied(cg, *final_of(sample, at_empty))
        finally:
            if key in self._gone_pending and not self._final_pending[key]:
                self._gone_pending.discard(key)
                self.on_gone(cg)

    def _emptied(self, cg: WatchedCgroup, sample: CgroupSample, partial: bool = False) -> None:
        key = (cg.path, cg.inode)
        if sample.populated:
            return  # a process came (back) before the read: not its end
        if sample.vanished:
            # Removed before the read: the last cycle's data, marked not final.
            last = self._last_sample(cg.identity)
            if self._running.get(key):
                self._stopped(cg.identity, last, final=False)
            return
        if not self._running.get(key):
            usage = sample.cpu.usage_usec if sample and sample.cpu else None
            if usage is None or usage <= self._usage.get(key, 0):
                return  # a notification with nothing behind it
            # It ran and emptied between two reads (a life shorter than our reaction).
            self.emit(EventType.CONTAINER_STARTED, cg.identity, "",
                      {"source": "kernel", "coalesced": True})
        self._stopped(cg.identity, sample, final=True, partial=partial)

    def _stopped(self, who: WorkloadIdentity, sample: CgroupSample | None, final: bool,
                 partial: bool = False) -> None:
        key = who.incarnation
        self._running[key] = False
        if sample is not None and sample.cpu is not None and sample.cpu.usage_usec is not None:
            self._usage[key] = sample.cpu.usage_usec
        fields: dict[str, object] = {"final": final}
        if partial:
            fields["final_partial"] = True  # removed before the full read: CPU only
        if sample is not None:
            fields.update(final_fields(sample))
        snapshot = self.ctx.latest() if self.ctx else None
        if snapshot is not None:
            fields.update(net_totals(snapshot, who.id))
        self.emit(EventType.CONTAINER_STOPPED, who, "", fields)
        if final and sample is not None and self.ctx is not None:
            try:
                self.ctx.publish_final_sample(who, sample)
            except Exception:
                log.exception("final-sample listener failed for %s", who.cgroup)

    def on_frozen(self, cg: WatchedCgroup, frozen: bool) -> None:
        if self.loop is not None:
            self.limits.frozen(cg, frozen, self.loop)

    def on_counter(self, cg: WatchedCgroup, source: str, key: str, delta: int, total: int) -> None:
        self.limits.counter(cg, source, key, delta, total)

    def on_pressure(self, cg: WatchedCgroup, res: str, text: str) -> None:
        self.limits.pressure(cg, res, text, self.watcher.psi if self.watcher else None)

    def on_gone(self, cg: WatchedCgroup) -> None:
        key = (cg.path, cg.inode)
        with self._pending_lock:
            pending = self._final_pending[key] > 0
        if pending:
            self._gone_pending.add(key)  # the final read's result decides: see _after_final
            return
        if self.final_reads is not None:
            # The final read may have reopened files after the tree watch let them go: release
            # again once it is done, so no fd pins the removed cgroup (idempotent). In the
            # watch's worker, not here: the release waits for the reader's lock, which a
            # cycle's read holds, and its closes let the GIL go, each taken back behind the
            # agent's busy threads (on the loop: >4 ms for 1 removal in 10 at 1,000 cgroups).
            if self.watcher is not None:
                self.watcher.deferred.call(0.0, self.final_reads.reader.release, cg.path)
            else:
                self.final_reads.reader.release(cg.path)
        rmdir = self.rmdir.sample(cg)  # taken in any case: each is used once
        if self._running.get(key) or (key not in self._running and rmdir is not None):
            if rmdir is not None:  # removed before any read: the CPU its rmdir kept
                self._emptied(cg, rmdir, partial=True)
            else:  # removed before we could read it, or while we were not told: last cycle's
                self._stopped(cg.identity, self._last_sample(cg.identity), final=False)
        self._forget(key)

    def _forget(self, key: tuple[str, int]) -> None:
        """An incarnation is gone: nothing more is told of it."""
        self._running.pop(key, None)
        self._usage.pop(key, None)
        self._gone.add(key)

    def on_unseen(self, path: str, until: float | None = None) -> None:
        """A cgroup made and removed before the watch got to its IN_CREATE (the watch thread
        was behind): its life is still told, started and stopped, from the final-read
        process's own read of its end or the CPU its rmdir kept (see agent.events.unseen).
        (Its child cgroups, if it had any, were never watched: their CPU is in its counter.)
        Neither may be there yet: looked for again every poll_s for wait_s."""
        if self.watcher is None or self.loop is None:
            return
        now = time.monotonic()
        until = now + self.rmdir.wait_s if until is None else until
        found = unseen_end(path, self.final_reads, self.rmdir,
                           lambda inode: not self._known((path, inode)))
        if found is None:
            if now < until:  # this life's rmdir, or the process's read, may still come
                self.loop.call_later(self.rmdir.poll_s, self.on_unseen, path, until)
            return
        sample, partial = found
        assert sample.inode is not None
        identity = self.watcher.identify(path, sample.inode)
        self._emptied(WatchedCgroup(path, sample.inode, identity, new=True), sample,
                      partial=partial)
        self._forget((path, sample.inode))

    def _known(self, key: tuple[str, int]) -> bool:
        """An incarnation the watch followed (running, its final read pending, or gone)."""
        watched = self.watcher.cgroups.get(key[0]) if self.watcher is not None else None
        with self._pending_lock:
            pending = self._final_pending.get(key, 0) > 0
        return (pending or key in self._running or key in self._gone
                or (watched is not None and watched.inode == key[1]))

    def _last_sample(self, who: WorkloadIdentity) -> CgroupSample | None:
        snapshot = self.ctx.latest() if self.ctx else None
        state = snapshot.workloads.get(who.id) if snapshot else None
        if state is not None and state.identity.incarnation == who.incarnation:
            return state.sample
        return None

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        prev = self._prev
        prev_states = {w.identity.incarnation: w for w in prev.workloads.values()} if prev else {}
        cfg = self.ctx.section(self.name) if self.ctx is not None else {}
        limit = float(cfg.get("cpu_throttled_share", 0.25))
        current: dict[tuple[str, int], WorkloadState] = {}
        for n, state in enumerate(snapshot.workloads.values(), 1):
            if n % YIELD_EVERY == 0:
                # ~10 ms at 1,000 workloads here: requests and notices go between the parts.
                await asyncio.sleep(0)
            who = state.identity
            key = who.incarnation
            current[key] = state
            watched = self.watcher.cgroups.get(who.cgroup) if self.watcher else None
            if self.watcher is not None:
                if watched is None or watched.inode != who.inode:
                    watched = self.watcher.watch(who, new=prev is not None and key not in
                                                 prev_states, v1_paths=state.sample.v1_paths)
                else:
                    watched.identity = who
            if prev is None:
                if state.sample.populated is not False:
                    self._running.setdefault(key, True)  # running before we started
            elif not self._running.get(key) and key not in prev_states and (
                state.sample.populated is not False and key not in self._running
            ) and key not in self._gone and not (
                watched is not None and mirrors_children(watched)):
                self._running[key] = True
                self.emit(EventType.CONTAINER_STARTED, who, "", {"source": "discovery"})
            said = throttle_episode(self._throttled, state, prev_states.get(key), limit)
            if said is not None:
                self.emit(EventType.CPU_THROTTLED, who, "", said)
        if self.watcher is not None:
            self.watcher.poll_scope = PollScope(*limited_subtrees(snapshot))
            if self.watcher.psi_error and self.ctx is not None:
                self.ctx.host_facts["psi_triggers"] = self.watcher.psi_error
        for key, state in prev_states.items():
            if key in current:
                continue
            if self._running.get(key):
                self._stopped(state.identity, state.sample, final=False)
            self._running.pop(key, None)
            self._throttled.discard(key)
            w = self.watcher.cgroups.get(key[0]) if self.watcher is not None else None
            if w is not None and w.inode == key[1] and _inode(self.watcher, key[0]) != key[1]:
                assert self.watcher is not None
                self.watcher.unwatch(key[0])  # gone (without a tree watch to say so)
        self._prev = snapshot

    def _prune(self) -> None:
        if self.log is None or self.ctx is None:
            return
        cfg = self.ctx.section(self.name)
        days = float(cfg.get("retention_days", 14))
        count = int(cfg.get("retention_count", 100_000))
        with contextlib.suppress(StoreClosed):  # a storm's prune at shutdown
            self.log.prune_soon(days * 86400, count, time.time_ns())  # in the store's writer

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(60)
            self._prune()

