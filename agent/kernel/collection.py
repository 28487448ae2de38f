"""One collection cycle: the known workloads, read through collectors, into a Snapshot.

Runs in a worker thread (blocking kernel reads); the event loop only swaps the finished,
immutable snapshot in. Workloads are kept by cgroup path: a full discovery scan at start, after
an inotify overflow and every `rescan_interval`; in between, inotify creations and deletions.
A workload is identified again during its first cycles, because a runtime creates the cgroup
before it moves the container's processes in (and writes its state file).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from agent.core.component import AgentContext, Component
from agent.core.urgency import URGENT
from agent.identity.discovery import Discovery
from agent.kernel.path_index import PathIndex
from agent.model.rates import compute_rates
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadState
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample

log = logging.getLogger("agent.collection")

#: How many cycles a new workload is identified again.
YOUNG_CYCLES = 3


@dataclass
class _Tracked:
    identity: WorkloadIdentity
    young: int = YOUNG_CYCLES


@dataclass
class CollectionState:
    #: Sorted too: a removal finds the cgroups below it without a scan of every path.
    by_path: PathIndex[_Tracked] = field(default_factory=PathIndex)
    prev_samples: dict[str, CgroupSample] = field(default_factory=dict)
    prev_net: dict[str, tuple[int, int]] = field(default_factory=dict)
    seq: int = 0


class Collector:
    def __init__(
        self,
        discovery: Discovery,
        reader: CgroupReader,
        enrich: Callable[[WorkloadIdentity], WorkloadIdentity] = lambda w: w,
    ) -> None:
        self.discovery = discovery
        self.reader = reader
        #: Runtime names and images from the identity cache (a lookup, never a wait).
        self.enrich = enrich
        self.state = CollectionState()
        self._lock = threading.Lock()

    # -- workloads ---------------------------------------------------------------------
    def full_scan(self) -> list[str]:
        """Rediscover everything; returns the cgroup paths now known."""
        found = self.discovery.scan()
        with self._lock:
            old = self.state.by_path
            self.state.by_path = PathIndex()
            for w in found.values():
                self.state.by_path[w.cgroup] = old.get(w.cgroup) or _Tracked(w)
            for w in found.values():
                tracked = self.state.by_path[w.cgroup]
                if tracked.identity != w:  # an equal one stays: consumers compare by `is`
                    tracked.identity = w
            gone = [p for p in old if p not in self.state.by_path]
            paths = list(self.state.by_path)
        # Removed without an inotify event to say so (watch limit, overflow): close its fds.
        for path in gone:
            self.reader.release(path)
        return paths

    def add_paths(self, paths: Iterable[str]) -> list[WorkloadIdentity]:
        added: list[WorkloadIdentity] = []
        for path in paths:
            ident = self.discovery.identify(path)
            if ident is None:
                continue
            with self._lock:
                self.state.by_path[path] = _Tracked(ident)
            added.append(ident)
        return added

    def remove_paths(self, paths: Iterable[str]) -> list[WorkloadIdentity]:
        """Forget removed cgroups (and what is below them) and close every fd kept for them."""
        gone: list[WorkloadIdentity] = []
        released: set[str] = set()
        with self._lock:
            for path in paths:
                released.add(path)
                for p in self.state.by_path.subtree(path):
                    gone.append(self.state.by_path.pop(p).identity)
                    released.add(p)
        for path in released:
            self.reader.release(path)
        return gone

    def identities(self) -> list[WorkloadIdentity]:
        with self._lock:
            return [t.identity for t in self.state.by_path.values()]

    def _refresh_young(self) -> None:
        with self._lock:
            young = [t for t in self.state.by_path.values() if t.young > 0]
        for t in young:
            t.young -= 1
            ident = self.discovery.identify(t.identity.cgroup)
            if ident is not None and ident != t.identity:
                t.identity = ident

    # -- reading -----------------------------------------------------------------------
    def read(self, idents: Iterable[WorkloadIdentity]) -> dict[str, WorkloadState]:
        """Read samples (no rates yet); vanished cgroups are dropped from the result."""
        out: dict[str, WorkloadState] = {}
        self.reader.begin_pass()
        give_way = URGENT.give_way  # a final read at `populated 0` goes first
        for ident in idents:
            give_way()
            sample = self.reader.read(ident.cgroup, member_pid=ident.init_pid, in_pass=True)
            if sample.vanished:
                continue
            if sample.inode is not None and sample.inode != ident.inode:
                # Recreated at the same path since discovery: a new incarnation.
                ident = self.discovery.identify(ident.cgroup) or ident
            ident = self.enrich(ident)
            out[ident.id] = WorkloadState(identity=ident, sample=sample)
        return out

    def cycle(
        self,
        ctx: AgentContext,
        host: HostInfo,
        components: list[Component],
        net_totals: Callable[[Snapshot], dict[str, tuple[int, int]] | None],
    ) -> Snapshot:
        cpu0 = time.thread_time_ns()
        self._refresh_young()
        states = self.read(self.identities())
        self.state.seq += 1
        snap = Snapshot(
            seq=self.state.seq,
            wall_ns=time.time_ns(),
            monotonic_ns=time.monotonic_ns(),
            cycle_cpu_ns=0,
            host=host,
            workloads=MappingProxyType(states),
        )
        extras: dict[str, object] = {}
        for comp in components:
            try:
                result = comp.collect(ctx, snap)
            except Exception as e:
                log.exception("component %s failed to collect", comp.name)
                ctx.health.fault(comp.name, "collect", repr(e))
                continue
            ctx.health.clear(comp.name, "collect")
            if result is not None:
                extras[comp.name] = result
        snap = replace(snap, extras=MappingProxyType(extras))
        nets = net_totals(snap) or {}
        with_rates: dict[str, WorkloadState] = {}
        for wid, st in states.items():
            prev = self.state.prev_samples.get(wid)
            rates = compute_rates(prev, st.sample, self.state.prev_net.get(wid), nets.get(wid))
            with_rates[wid] = WorkloadState(st.identity, st.sample, rates)
        self.state.prev_samples = {wid: st.sample for wid, st in states.items()}
        self.state.prev_net = dict(nets)
        return replace(
            snap, workloads=MappingProxyType(with_rates), cycle_cpu_ns=time.thread_time_ns() - cpu0
        )

    def amend(
        self, snap: Snapshot, added: list[WorkloadIdentity], gone: list[WorkloadIdentity]
    ) -> Snapshot:
        """A snapshot with workloads added (first sample read now) or removed, between cycles."""
        workloads = dict(snap.workloads)
        for ident in gone:
            workloads.pop(ident.id, None)
        workloads.update(self.read(added))
        return replace(snap, workloads=MappingProxyType(workloads))
