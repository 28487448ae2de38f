"""Network namespaces of the host and every interface in each, with 64-bit counters.

A namespace is identified by (st_dev, st_ino) of its nsfs file. They are found through every
process (/proc/<pid>/ns/net), the names under /run/netns and /var/run/netns (`ip netns add`),
and the host's own (pid 1's; the agent's own where pid 1's link is unreadable).

`NetnsCollector` keeps one rtnetlink socket per namespace open across cycles (opening one
costs a setns() and a socket(); querying one costs a single dump) and closes it in the cycle
the namespace is no longer found. An open socket holds a reference on its namespace, so a
namespace the host deleted lives on only until that cycle.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from collectors.pid_netns import NetnsKey as NetnsKey
from collectors.pid_netns import PidNetns, stat_key
from collectors.rtnetlink import (
    LinkAttrs,
    LinkStats,
    OpenRequest,
    RtnlHandle,
    new_route_socket,
    run_in_namespaces,
    socket_namespace_fd,
)

PROC = Path("/proc")
NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))


@dataclass(frozen=True, slots=True)
class NetnsRef:
    """Where a namespace was found."""

    key: NetnsKey
    #: Names under the netns directories (`ip netns` names), sorted.
    names: tuple[str, ...] = ()
    #: Processes whose /proc/<pid>/ns/net is this namespace, ascending.
    pids: tuple[int, ...] = ()
    is_host: bool = False

    @property
    def ino(self) -> int:
        return self.key[1]


class Interface(NamedTuple):
    """One interface: metadata from the last link dump, counters from this cycle."""

    attrs: LinkAttrs
    #: This cycle's counters (attrs.stats are those of the last link dump).
    stats: LinkStats | None
    #: Namespace holding attrs.link_index (the veth peer, a macvlan's lower device): this one
    #: when the link is local, another when resolved through IFLA_LINK_NETNSID, None unknown.
    link_netns: NetnsKey | None

    @property
    def name(self) -> str:
        return self.attrs.name

    @property
    def ifindex(self) -> int:
        return self.attrs.index


@dataclass(frozen=True, slots=True)
class NetnsSample:
    ref: NetnsRef
    interfaces: tuple[Interface, ...] = ()
    #: Why the namespace could not be read this cycle (it may have just gone), else None.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NetnsScan:
    """One collection: every namespace found, with its interfaces."""

    namespaces: Mapping[NetnsKey, NetnsSample]
    host: NetnsKey | None
    monotonic_ns: int
    #: Counts for this cycle: opened/closed sockets, full link dumps, stats-only dumps.
    opened: int = 0
    closed: int = 0
    link_dumps: int = 0
    stats_dumps: int = 0
    nsid_queries: int = 0
    errors: tuple[str, ...] = field(default=())


def host_netns(proc_root: Path = PROC) -> NetnsKey | None:
    """pid 1's namespace; the caller's where pid 1's ns link is unreadable (EACCES)."""
    return stat_key(f"{proc_root}/1/ns/net") or stat_key(f"{proc_root}/self/ns/net")


def pid_netns(pid: int, proc_root: Path = PROC) -> NetnsKey | None:
    return stat_key(f"{proc_root}/{pid}/ns/net")


def find_namespaces(
    proc_root: Path = PROC, netns_dirs: Sequence[Path] = NETNS_DIRS,
    by_pid: PidNetns | None = None,
) -> tuple[dict[NetnsKey, NetnsRef], NetnsKey | None]:
    """Every network namespace reachable through a process or a name, and the host's.
    `by_pid`: the cache of processes' namespaces kept between scans (None: stat them all)."""
    pids = (by_pid or PidNetns(recheck_every=1)).scan(proc_root)
    names: dict[NetnsKey, set[str]] = {}
    host = host_netns(proc_root)
    # nsfs has one device: a name that is not on it is a plain file (`ip netns add` leaves an
    # empty one behind when its bind mount fails), not a namespace.
    own = stat_key("/proc/self/ns/net")
    nsfs = host[0] if host else own[0] if own else None
    for d in netns_dirs:
        try:
            with os.scandir(d) as it:
                named = [(e.name, e.path) for e in it]
        except OSError:
            continue
        for name, path in named:
            key = stat_key(path)
            if key is not None and key[0] == nsfs:
                names.setdefault(key, set()).add(name)
    refs: dict[NetnsKey, NetnsRef] = {}
    for key in pids.keys() | names.keys() | ({host} if host else set()):
        refs[key] = NetnsRef(
            key=key,
            names=tuple(sorted(names.get(key, ()))),
            pids=tuple(pids.get(key, ())),
            is_host=key == host,
        )
    return refs, host


class _Handle:
    """An open socket in one namespace and what is cached about it."""

    __slots__ = ("failed_gen", "links", "nsids", "refreshed_at", "rtnl")

    def __init__(self, rtnl: RtnlHandle) -> None:
        self.rtnl = rtnl
        self.links: dict[int, LinkAttrs] = {}
        self.refreshed_at = 0.0
        #: IFLA_LINK_NETNSID value -> namespace it names, as resolved so far.
        self.nsids: dict[int, NetnsKey] = {}
        #: nsid -> namespace-set generation at which resolving it failed (retry on change).
        self.failed_gen: dict[int, int] = {}


class NetnsCollector:
    """Reads every namespace's interfaces each cycle, keeping sockets open between cycles.

    Not thread-safe: one collector belongs to one (worker) thread. Call close() at the end.
    """

    def __init__(
        self,
        proc_root: Path = PROC,
        netns_dirs: Sequence[Path] = NETNS_DIRS,
        refresh_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc_root = proc_root
        self.netns_dirs = tuple(netns_dirs)
        #: Full link dump at least this often even without a notification (safety net).
        self.refresh_s = refresh_s
        self._clock = clock
        self._handles: dict[NetnsKey, _Handle] = {}
        self._by_pid = PidNetns()
        #: Namespaces that could not be opened: (retry after, error).
        self._failed: dict[NetnsKey, tuple[float, str]] = {}
        self._generation = 0
        #: False once the kernel refused RTM_GETSTATS (before 4.7): link dumps only.
        self._getstats = True

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for h in self._handles.values():
            h.rtnl.close()
        self._handles.clear()

    def collect(self) -> NetnsScan:
        refs, host = find_namespaces(self.proc_root, self.netns_dirs, self._by_pid)
        closed = self._close_gone(refs)
        opened, errors = self._open_new(refs)
        now = self._clock()
        samples: dict[NetnsKey, NetnsSample] = {}
        link_dumps = stats_dumps = 0
        fresh: dict[NetnsKey, dict[int, LinkStats | None]] = {}
        for key, ref in refs.items():
            h = self._handles.get(key)
            if h is None:
                samples[key] = NetnsSample(ref, error=errors.get(key, "not opened"))
                continue
            try:
                stats, full = self._read(h, now)
            except OSError as e:
                h.rtnl.close()
                del self._handles[key]
                closed += 1
                samples[key] = NetnsSample(ref, error=f"{e.strerror or e}")
                continue
            link_dumps += full
            stats_dumps += not full
            fresh[key] = stats
        queries = self._resolve_peers(fresh)
        for key, stats in fresh.items():
            h = self._handles[key]
            ifaces = tuple(
                Interface(a, stats.get(idx), self._link_netns(key, h, a))
                for idx, a in sorted(h.links.items())
            )
            samples[key] = NetnsSample(refs[key], ifaces)
        return NetnsScan(
            namespaces=MappingProxyType(samples),
            host=host,
            monotonic_ns=time.monotonic_ns(),
            opened=opened,
            closed=closed,
            link_dumps=link_dumps,
            stats_dumps=stats_dumps,
            nsid_queries=queries,
            errors=tuple(f"{k[1]}: {v}" for k, v in errors.items()),
        )

    # -- sockets ---------------------------------------------------------------------------

    def _close_gone(self, refs: Mapping[NetnsKey, NetnsRef]) -> int:
        gone = [k for k in self._handles if k not in refs]
        for key in gone:
            self._handles.pop(key).rtnl.close()
        if gone:
            self._generation += 1
            dead = set(gone)
            for h in self._handles.values():
                for nsid in [n for n, k in h.nsids.items() if k in dead]:
                    del h.nsids[nsid]
        return len(gone)

    def _open_new(self, refs: Mapping[NetnsKey, NetnsRef]) -> tuple[int, dict[NetnsKey, str]]:
        """Open a socket in each namespace not open yet. One in the agent's own namespace needs
        no setns() (so the host's counters work without CAP_SYS_ADMIN); a namespace that could
        not be opened is retried after refresh_s, not every cycle."""
        now = self._clock()
        errors: dict[NetnsKey, str] = {}
        wanted: list[OpenRequest] = []
        opened = 0
        own = stat_key("/proc/thread-self/ns/net")
        for key, ref in refs.items():
            if key in self._handles:
                continue
            failed = self._failed.get(key)
            if failed is not None and now < failed[0]:
                errors[key] = failed[1]
            elif key == own:
                try:
                    self._handles[key] = _Handle(RtnlHandle(new_route_socket()))
                    opened += 1
                except OSError as e:
                    errors[key] = e.strerror or str(e)
            else:
                wanted.append(OpenRequest(key, self._paths(ref)))
        for key in [k for k in self._failed if k not in refs]:
            del self._failed[key]
        if wanted:
            for key, result in run_in_namespaces(wanted, new_route_socket).items():
                if isinstance(result, OSError):
                    errors[key] = result.strerror or str(result)
                    self._failed[key] = (now + self.refresh_s, errors[key])
                else:
                    self._handles[key] = _Handle(RtnlHandle(result))
                    self._failed.pop(key, None)
                    opened += 1
        if opened:
            self._generation += 1
        return opened, errors

    def _paths(self, ref: NetnsRef) -> list[str]:
        paths = [str(d / n) for n in ref.names for d in self.netns_dirs]
        paths += [f"{self.proc_root}/{pid}/ns/net" for pid in ref.pids[:4]]
        if ref.is_host and not ref.pids:
            paths.append(f"{self.proc_root}/self/ns/net")
        return paths

    # -- reading ---------------------------------------------------------------------------

    def _read(self, h: _Handle, now: float) -> tuple[dict[int, LinkStats | None], bool]:
        """This cycle's counters; a full link dump when links changed or are due a refresh."""
        rtnl = h.rtnl
        if self._getstats and not rtnl.changed and now - h.refreshed_at < self.refresh_s:
            try:
                stats = dict(rtnl.stats())
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._getstats = False
                stats = {}
            if self._getstats and not rtnl.changed and stats.keys() == h.links.keys():
                return stats, False
        rtnl.changed = False  # cleared before the dump: a change during it is seen next cycle
        links = rtnl.links()
        h.links = {a.index: a for a in links}
        h.refreshed_at = now
        h.failed_gen.clear()
        stats = {a.index: a.stats for a in links}
        if self._getstats:
            # Counters from the same (hand) decoder every cycle: pyroute2's link decoder lacks
            # the newest stats64 fields, so a full-dump cycle must not change their presence.
            try:
                stats.update(rtnl.stats())
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._getstats = False
        return stats, True

    # -- veth peers across namespaces ------------------------------------------------------

    def _link_netns(self, key: NetnsKey, h: _Handle, a: LinkAttrs) -> NetnsKey | None:
        if a.link_index is None:
            return None
        if a.link_netnsid is None:
            return key
        return h.nsids.get(a.link_netnsid)

    def _resolve_peers(self, live: Mapping[NetnsKey, object]) -> int:
        """Learn which namespace each IFLA_LINK_NETNSID names, asking the kernel (RTM_GETNSID)
        about candidate namespaces, likeliest first. Results are cached per namespace pair."""
        queries = 0
        for key in live:
            h = self._handles[key]
            for a in h.links.values():
                nsid = a.link_netnsid
                if nsid is None or nsid in h.nsids:
                    continue
                if h.failed_gen.get(nsid) == self._generation:
                    continue
                for cand in self._candidates(key, a):
                    queries += 1
                    if self._ask(h, cand) == nsid:
                        break
                else:
                    h.failed_gen[nsid] = self._generation
        return queries

    def _candidates(self, key: NetnsKey, a: LinkAttrs) -> list[NetnsKey]:
        """Namespaces whose id here is not known yet, likeliest first: those with a reciprocal
        link (index a.link_index, link a.index) that is known to point back here, then those
        with a reciprocal link pointing to an unknown namespace, then the rest."""
        h = self._handles[key]
        known = set(h.nsids.values())
        scored: list[tuple[int, NetnsKey]] = []
        for other, oh in self._handles.items():
            if other == key or other in known:
                continue
            score = 2
            peer = oh.links.get(a.link_index or 0)
            if peer is not None and peer.link_index == a.index and peer.link_netnsid is not None:
                back = oh.nsids.get(peer.link_netnsid)
                score = 0 if back == key else 1 if back is None else 2
            scored.append((score, other))
        scored.sort()
        return [other for _score, other in scored]

    def _ask(self, h: _Handle, other: NetnsKey) -> int | None:
        try:
            with socket_namespace_fd(self._handles[other].rtnl.sock) as fd:
                nsid = h.rtnl.nsid_of(fd)
        except OSError:
            return None  # that namespace or socket is unusable now; asked again next time
        if nsid is not None:
            h.nsids[nsid] = other
        return nsid
