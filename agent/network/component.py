"""Network accounting per network namespace, mapped to the workloads that use it.

Each cycle the collector reads every namespace on the host (collectors.netns); here each one is
mapped to the workloads whose init process lives in it:

- a namespace shared by several workloads (a pod sandbox, `--network container:`) is counted
  once: on its *owner*, the member whose init process started first (containers before other
  workloads), and listed with all its members;
- a workload on the host's namespace is marked host_network and is never given the host's
  traffic;
- veth pairs are linked across namespaces, so a container's eth0 names its host-side peer and
  that peer's bridge.

`NetworkSnapshot` (frozen) lands in `Snapshot.extras["network"]`; scrapes and the API read only
that (agent/network_export.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client.metrics_core import Metric

from agent.core.component import AgentContext, Component, Setting
from agent.model.snapshot import Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.netns import (
    NETNS_DIRS,
    PROC,
    Interface,
    NetnsCollector,
    NetnsKey,
    NetnsScan,
    pid_netns,
)
from collectors.procfs import parse_stat
from collectors.rtnetlink import LinkStats

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("agent.network")

#: IFF_LOOPBACK: loopback traffic never leaves the namespace, so totals leave it out.
IFF_LOOPBACK = 0x8
IFF_UP = 0x1

ROLE_OWNER = "owner"
ROLE_MEMBER = "member"
ROLE_HOST = "host_network"


class PeerRef(NamedTuple):
    """The other end of a link (veth peer, lower device), possibly in another namespace."""

    netns: int
    ifindex: int
    name: str
    #: The peer's master (the bridge a host-side veth is enslaved to), if any.
    master: str | None
    #: The peer is in the host's namespace.
    host: bool


class InterfaceView(NamedTuple):
    name: str
    ifindex: int
    kind: str | None
    mac: str | None
    mtu: int | None
    operstate: str
    flags: int
    #: Name of this interface's master in its namespace (a bridge), if any.
    master: str | None
    peer: PeerRef | None
    stats: LinkStats | None

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)


@dataclass(frozen=True, slots=True)
class Member:
    """A workload using a namespace, with what labels need."""

    id: str
    name: str
    runtime: str
    cgroup: str
    role: str
    #: WorkloadKind value: container, service or cgroup.
    kind: str = WorkloadKind.CONTAINER.value


@dataclass(frozen=True, slots=True)
class NamespaceView:
    ino: int
    dev: int
    #: `ip netns` names, if any.
    names: tuple[str, ...]
    is_host: bool
    #: Workloads using it, owner first.
    members: tuple[Member, ...]
    #: Workload id its traffic is counted on; None for the host's and for unmapped namespaces.
    owner: str | None
    interfaces: tuple[InterfaceView, ...]
    processes: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkSnapshot:
    """Every namespace with its interfaces and members, and per-workload totals."""

    #: Keyed by namespace inode.
    namespaces: Mapping[int, NamespaceView]
    host_netns: int | None
    #: Workload id -> inode of its namespace (host-network workloads included).
    netns_by_workload: Mapping[str, int]
    #: Workloads on the host's namespace (never given the host's traffic).
    host_network: frozenset[str]
    #: Owner workload id -> (rx_bytes, tx_bytes) over its namespace's non-loopback interfaces.
    totals_by_workload: Mapping[str, tuple[int, int]]
    monotonic_ns: int
    #: Netlink sockets the collector holds open (one per readable namespace): a leak shows here.
    open_sockets: int = 0

    def namespace_of(self, workload_id: str) -> NamespaceView | None:
        ino = self.netns_by_workload.get(workload_id)
        return self.namespaces.get(ino) if ino is not None else None


def build_snapshot(
    scan: NetnsScan,
    workloads: Mapping[str, WorkloadState],
    netns_of: Mapping[str, int],
    start_of: Mapping[str, int],
    open_sockets: int = 0,
) -> NetworkSnapshot:
    """Join one scan with this cycle's workloads (netns_of: workload id -> netns inode;
    start_of: workload id -> start time of its init process, to choose owners)."""
    host_ino = scan.host[1] if scan.host else None
    by_ino: dict[int, list[WorkloadIdentity]] = {}
    host_network: set[str] = set()
    for wid, ino in netns_of.items():
        ident = workloads[wid].identity
        if ino == host_ino:
            host_network.add(wid)
        by_ino.setdefault(ino, []).append(ident)
    names_by_key: dict[NetnsKey, dict[int, tuple[str, int | None]]] = {}
    for key, sample in scan.namespaces.items():
        names_by_key[key] = {i.attrs.index: (i.attrs.name, i.attrs.master_index)
                             for i in sample.interfaces}
    views: dict[int, NamespaceView] = {}
    totals: dict[str, tuple[int, int]] = {}
    for key, sample in scan.namespaces.items():
        ino = key[1]
        local = names_by_key[key]
        ifaces = tuple(_view(i, local, names_by_key, scan.host) for i in sample.interfaces)
        members, owner = _members(by_ino.get(ino, []), start_of, sample.ref.is_host)
        views[ino] = NamespaceView(
            ino=ino,
            dev=key[0],
            names=sample.ref.names,
            is_host=sample.ref.is_host,
            members=members,
            owner=owner,
            interfaces=ifaces,
            processes=len(sample.ref.pids),
            error=sample.error,
        )
        if owner is not None and sample.error is None:
            rx = tx = 0
            for i in ifaces:
                if i.stats is not None and not i.loopback:
                    rx += i.stats.rx_bytes
                    tx += i.stats.tx_bytes
            totals[owner] = (rx, tx)
    return NetworkSnapshot(
        namespaces=MappingProxyType(views),
        host_netns=host_ino,
        netns_by_workload=MappingProxyType(dict(netns_of)),
        host_network=frozenset(host_network),
        totals_by_workload=MappingProxyType(totals),
        monotonic_ns=scan.monotonic_ns,
        open_sockets=open_sockets,
    )


def _view(
    i: Interface,
    local: Mapping[int, tuple[str, int | None]],
    names_by_key: Mapping[NetnsKey, Mapping[int, tuple[str, int | None]]],
    host: NetnsKey | None,
) -> InterfaceView:
    a = i.attrs
    m = local.get(a.master_index) if a.master_index is not None else None
    master = m[0] if m is not None else None
    peer = None
    if a.link_index is not None and i.link_netns is not None:
        there = names_by_key.get(i.link_netns, {})
        if a.link_index in there:
            pname, pmaster = there[a.link_index]
            pm = there.get(pmaster) if pmaster is not None else None
            peer = PeerRef(
                netns=i.link_netns[1],
                ifindex=a.link_index,
                name=pname,
                master=pm[0] if pm is not None else None,
                host=i.link_netns == host,
            )
    return InterfaceView(a.name, a.index, a.kind, a.mac, a.mtu, a.operstate, a.flags, master,
                         peer, i.stats)


def _members(
    idents: Sequence[WorkloadIdentity], start_of: Mapping[str, int], is_host: bool
) -> tuple[tuple[Member, ...], str | None]:
    """Members owner first: containers before other workloads, then earliest init process,
    then id. The host's namespace has no owner: its members are host-network workloads."""

    def order(ident: WorkloadIdentity) -> tuple[int, int, str]:
        return (ident.kind is not WorkloadKind.CONTAINER, start_of.get(ident.id, 1 << 62),
                ident.id)

    ranked = sorted(idents, key=order)
    if is_host:
        return tuple(_member(x, ROLE_HOST) for x in ranked), None
    members = tuple(_member(x, ROLE_OWNER if n == 0 else ROLE_MEMBER) for n, x in
                    enumerate(ranked))
    return members, (ranked[0].id if ranked else None)


def _member(ident: WorkloadIdentity, role: str) -> Member:
    return Member(ident.id, ident.name, ident.runtime, ident.cgroup, role, ident.kind.value)


def _settings() -> Mapping[str, Setting]:
    def positive(v: object) -> str | None:
        return None if isinstance(v, int | float) and v > 0 else "must be > 0"

    def paths(v: object) -> str | None:
        ok = isinstance(v, list) and all(isinstance(x, str) and x.startswith("/") for x in v)
        return None if ok else "must be a list of absolute directory paths"

    return MappingProxyType({
        "enabled": Setting(bool, True, "collect per-namespace network counters"),
        "link_refresh": Setting(
            (int, float), 60, "seconds between full link dumps without a link notification",
            positive),
        "netns_dirs": Setting(list, [str(d) for d in NETNS_DIRS],
                              "directories of named network namespaces", paths),
    })


class NetworkComponent(Component):
    """Per-namespace interface counters, mapped to workloads."""

    snapshot_metrics = True

    name = "network"
    settings = _settings()

    def __init__(self, proc_root: Path = PROC, netns_dirs: Sequence[Path] | None = None) -> None:
        self.proc_root = proc_root
        self._netns_dirs = tuple(netns_dirs) if netns_dirs is not None else None
        self._collector: NetnsCollector | None = None
        self._lock = threading.Lock()
        self._cadvisor = False
        self._latest: Snapshot | None = None
        self._ctx: AgentContext | None = None
        #: (workload id, init pid) -> start ticks of the init process (owner choice).
        self._starts: dict[tuple[str, int], int] = {}

    async def start(self, ctx: AgentContext) -> None:
        self._configure(ctx)

    def _configure(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self._cadvisor = bool(ctx.config.get("cadvisor", False))

    def collect(self, ctx: AgentContext, snapshot: Snapshot) -> NetworkSnapshot | None:
        if self._ctx is None:
            self._configure(ctx)
        section = ctx.section(self.name)
        if not section.get("enabled", True):
            return None
        with self._lock:
            if self._collector is None:
                dirs = self._netns_dirs if self._netns_dirs is not None else tuple(
                    Path(d) for d in section.get("netns_dirs", [str(d) for d in NETNS_DIRS]))
                self._collector = NetnsCollector(
                    self.proc_root, dirs, refresh_s=float(section.get("link_refresh", 60)))
            scan = self._collector.collect()
            sockets = self._collector.open_handles
        netns_of, start_of = self._map_workloads(snapshot.workloads)
        return build_snapshot(scan, snapshot.workloads, netns_of, start_of, sockets)

    def _map_workloads(
        self, workloads: Mapping[str, WorkloadState]
    ) -> tuple[dict[str, int], dict[str, int]]:
        netns_of: dict[str, int] = {}
        start_of: dict[str, int] = {}
        starts: dict[tuple[str, int], int] = {}
        for wid, w in workloads.items():
            ident = w.identity
            ino = ident.namespaces.get("net")
            if ino is None and ident.init_pid:
                key = pid_netns(ident.init_pid, self.proc_root)
                ino = key[1] if key else None
            if ino is None:
                continue
            netns_of[wid] = ino
            if ident.init_pid:
                skey = (wid, ident.init_pid)
                start = self._starts.get(skey)
                if start is None:
                    start = self._start_ticks(ident.init_pid)
                if start is not None:
                    starts[skey] = start_of[wid] = start
        self._starts = starts
        return netns_of, start_of

    def _start_ticks(self, pid: int) -> int | None:
        try:
            with open(f"{self.proc_root}/{pid}/stat", encoding="utf-8", errors="replace") as f:
                parsed = parse_stat(f.read())
        except OSError:
            return None
        return parsed[2] if parsed else None

    @property
    def open_sockets(self) -> int:
        """Netlink sockets held now (0 before the first cycle and after stop())."""
        with self._lock:
            return self._collector.open_handles if self._collector is not None else 0

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        self._latest = snapshot

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        from agent.network.metrics import metric_families

        net = snapshot.extras.get("network")
        if not isinstance(net, NetworkSnapshot):
            return ()
        return metric_families(net, snapshot, cadvisor=self._cadvisor)

    def describe(self, snapshot: Snapshot, workload_id: str) -> Mapping[str, object] | None:
        net = snapshot.extras.get("network")
        if not isinstance(net, NetworkSnapshot):
            return None
        return workload_network(net, workload_id)

    def routes(self) -> list[web.RouteDef]:
        from aiohttp import web

        return [web.get("/api/v1/network", self._api_network)]

    async def _api_network(self, request: web.Request) -> web.Response:
        from aiohttp import web

        from agent.api.errors import json_error
        from agent.core.exit_codes import ExitCode
        from agent.network.metrics import network_json

        snap = self._ctx.latest() if self._ctx is not None else None
        snap = snap or self._latest
        net = snap.extras.get("network") if snap is not None else None
        if not isinstance(net, NetworkSnapshot):
            return json_error("no network snapshot yet", ExitCode.UNAVAILABLE)
        return web.json_response(network_json(net, request.query.get("netns")))

    async def stop(self) -> None:
        with self._lock:
            if self._collector is not None:
                self._collector.close()
                self._collector = None


def workload_network(net: NetworkSnapshot, workload_id: str) -> dict[str, object]:
    """JSON-ready network facts of one workload, for /api/v1/containers/{id} and agentctl."""
    from agent.network.metrics import workload_json

    return workload_json(net, workload_id)
