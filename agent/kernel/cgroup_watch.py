"""The agent's one kernel watch: every fd and watch kept for a cgroup has its owner here.

One inotify instance: IN_CREATE/IN_DELETE on every directory of the reference tree (the daemon
subscribes: discovery, collection, the reader's fds) and IN_MODIFY on `cgroup.events`,
`memory.events[.local]`, `pids.events[.local]` of followed cgroups (the events component
listens). v1 `memory.oom_control` through an eventfd; v1 `pids.events` and `memory.failcnt` send
no notification: polled. All of a cgroup's are released when it goes (IN_DELETE on the
parent, IN_IGNORED, ENODEV/ENOENT, the rescan). Counts come from re-reading files (notices
coalesce): listeners get deltas."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from agent.core.process_limits import raise_nofile_limit
from agent.kernel.deferred import DeferredWork
from agent.kernel.fd_budget import OUT_OF_FDS, FdBudget
from agent.kernel.final_read import settled
from agent.kernel.final_read_notices import YOUNG_FOR_NS, YOUNG_POLL_S
from agent.kernel.forwarded_inotify import ForwardedInotify, InotifySource
from agent.kernel.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Inotify,
    InotifyEvent,
)
from agent.kernel.kernfs import GONE, counter_values, has_subdir, read_text
from agent.kernel.path_index import PathIndex
from agent.kernel.psi import PsiWaiter
from agent.kernel.watch_sources import PSI_DELAY_S, SlowSources
from agent.kernel.watch_thread import LoopBridge, locked
from agent.kernel.watch_tree import TreeWatch
from agent.kernel.watched import (
    NoListener,
    PollScope,
    PsiTrigger,
    TreeListener,
    WatchedCgroup,
    WatchListener,
)
from agent.model.snapshot import WorkloadIdentity
from collectors import held_io
from collectors.cgroup_dir import flat
from collectors.cgroup_tree import cgroup_path
from collectors.cgroup_v2 import cpu_sample, events
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample

log = logging.getLogger("agent.kernel.watch")

#: Files kept open for as long as a cgroup2 cgroup is followed.
_KEPT = ("cgroup.events", "cpu.stat")


class CgroupWatcher(TreeWatch, SlowSources, LoopBridge):
    def __init__(
        self,
        layout: CgroupLayout,
        identify: Callable[[str, int], WorkloadIdentity],
        listener: WatchListener | None = None,
        psi: PsiTrigger | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.layout = layout
        self.root = layout.reference_root
        self._root_str = str(self.root)
        #: Per-cgroup changes (populated, counters, pressure, gone): the events component.
        self.listener: WatchListener = listener or NoListener()
        #: Directories made and removed: the daemon (discovery, collection, the reader's fds).
        self.tree_listeners: list[TreeListener] = []
        #: Follow the files of every new cgroup at once (set when a listener wants them).
        self.follow_new = listener is not None
        #: fs.inotify.max_user_watches reached: new cgroups are then found by the rescan.
        self.watches_exhausted = False
        #: Bounds the fds kept per cgroup; `short`: cgroups watched without some of theirs.
        self.fd_budget = FdBudget()
        self.short = 0
        self._created: list[str] = []
        self._deleted: list[str] = []
        self.identify = identify
        self.psi = psi
        self.poll_interval_s = poll_interval_s
        LoopBridge.__init__(self)
        #: Called in the watch thread the moment a cgroup is seen empty (populated 0), before
        #: anything else: the final read must not wait (the events component submits it).
        self.on_emptied: Callable[[WatchedCgroup], None] | None = None
        #: Re-read the CPU counter at empty until two reads agree (see settled). Off where the
        #: rmdir probe keeps the exact value: each re-read's yield gives the CPU away, for a
        #: time slice under load, before the final read is even asked for.
        self.settle_at_empty = True
        self.ino = Inotify()
        #: Set while the final-read process reads `ino` and forwards what it read.
        self._forwarded: ForwardedInotify | None = None
        self._forward_at_start: InotifySource | None = None
        self.deferred = DeferredWork()
        self.psi_waiter = PsiWaiter(self._on_psi, self.fd_budget)
        self.cgroups: PathIndex[WatchedCgroup] = PathIndex()
        self._dir_wds: dict[int, str] = {}
        self._dir_by_path: PathIndex[int] = PathIndex()
        self._file_wds: dict[int, WatchedCgroup] = {}
        self._psi_fds: dict[int, WatchedCgroup] = {}
        self._poll_handle: asyncio.TimerHandle | None = None
        #: Cgroups that filled less than YOUNG_FOR_NS ago -> until when they are polled.
        self._young: dict[str, tuple[WatchedCgroup, int]] = {}
        self.psi_error: str | None = None
        #: Which polled v1 counters can move (PollScope); all until told.
        self.poll_scope = PollScope()

    # -- lifecycle -----------------------------------------------------------------------
    @locked
    def start(self, loop: asyncio.AbstractEventLoop, watch_tree: bool = True) -> None:
        raise_nofile_limit()
        self.fd_budget.recap()
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.psi_waiter.start(loop)
        if watch_tree:
            self._watch_subtree("/", report_new=False)
        source, self._forward_at_start = self._forward_at_start, None
        if source is None or not self._forward(source):
            self._thread.add(self.ino.fd, self._on_inotify)
        self._thread.start()
        self._schedule_poll()

    def forward_inotify(self, source: InotifySource) -> bool:
        """From now on (or from start() on, called before it) `source` reads the inotify fd
        (it was handed the fd) and forwards what it read: told every directory watch first,
        under the lock, so none is missed."""
        with self.lock:
            if self._forwarded is not None or self._thread.closing:
                return False
            if self.loop is None:  # not started: the watch begins with it
                self._forward_at_start = source
                return True
            return self._thread.alive() and self._forward(source)

    def _forward(self, source: InotifySource) -> bool:
        forwarded = ForwardedInotify(source)
        if not forwarded.start(self._dir_wds):
            return False
        self._thread.remove(self.ino.fd)
        self._forwarded = forwarded
        self._thread.add(forwarded.wake_fd, self._on_inotify)
        return True

    def _read_inotify_again(self, forwarded: ForwardedInotify) -> None:
        log.info("the final-read process no longer forwards the kernel watch's notices: read"
                 " here again (the tree rescanned unless it was stopped on purpose)")
        self._thread.remove(forwarded.wake_fd)
        forwarded.close()
        self._forwarded = None
        self._thread.add(self.ino.fd, self._on_inotify)

    def close(self) -> None:
        self._thread.close()  # first: nothing runs in the watch thread from here on
        if self._forwarded is not None:
            self._forwarded.close()
            self._forwarded = None
        self.deferred.close()
        with self.lock:
            for path in list(self.cgroups):
                self.unwatch(path)
            if self._poll_handle is not None:
                self._poll_handle.cancel()
            self.ino.close()
            self.psi_waiter.close()

    def abs_path(self, path: str) -> str:
        return cgroup_path(self._root_str, path)

    # -- one cgroup ----------------------------------------------------------------------
    @locked
    def watch(
        self, identity: WorkloadIdentity, new: bool, v1_paths: Mapping[str, str] | None = None,
        dir_fd: int | None = None,
    ) -> WatchedCgroup | None:
        """Follow one cgroup; None when it is already gone. Idempotent per path and inode."""
        old = self.cgroups.get(identity.cgroup)
        if old is not None:
            if old.inode == identity.inode:
                old.identity = identity
                return old
            self.unwatch(identity.cgroup)
            self._tell(self.listener.on_gone, old)
        d = self.abs_path(identity.cgroup)
        cg = WatchedCgroup(identity.cgroup, identity.inode, identity, new)
        # Made a moment ago: no child yet (IN_CREATE tells of any).
        cg.has_children = not new and has_subdir(d)
        self.cgroups[cg.path] = cg
        if self.layout.unified is not None:
            if not self._keep_files(cg, d, dir_fd):
                self.unwatch(cg.path)
                return None
            if cg.path in self._dir_by_path:
                cg.names["cgroup.events"] = "cgroup.events"
            else:
                self._add_file(cg, "cgroup.events", f"{d}/cgroup.events")
            self.deferred.call(0.0, self._event_sources, cg)
            if self.psi is not None and cg.path != "/":
                self.deferred.call(PSI_DELAY_S if new else 0.0, self._arm_psi, cg)
        else:
            # Legacy v1: no cgroup.events; emptiness is polled from cgroup.procs.
            cg.files["cgroup.procs"] = f"{d}/cgroup.procs"
            cg.polled.add("cgroup.procs")
        if not new:
            self._defer_v1(cg, v1_paths=v1_paths, retry=False)
        for source in ("cgroup.events", "cgroup.procs"):
            if source in cg.files and self.cgroups.get(cg.path) is cg:
                self._reread(cg, source)
        return self.cgroups.get(cg.path)

    def _keep_files(self, cg: WatchedCgroup, d: str, dir_fd: int | None) -> bool:
        """Open the kept files; False when the cgroup is already gone. Past the watch's fd
        budget (or at EMFILE) the files are read by path instead (slower under churn)."""
        cg.files["cgroup.events"] = f"{d}/cgroup.events"
        for name in _KEPT:
            if not self.fd_budget.take(1, name, kept=True):
                self._mark_short(cg)
                continue
            try:
                cg.fds[name] = os.open(name if dir_fd is not None else f"{d}/{name}",
                                       os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as e:
                self.fd_budget.give(1, kept=True)
                if e.errno in OUT_OF_FDS:
                    self.fd_budget.refused(name, emfile=True)
                    self._mark_short(cg)
                elif e.errno not in GONE:
                    self._close_kept(cg)
                    raise
                elif name == "cgroup.events":
                    self._close_kept(cg)
                    return False
        return True

    def _close_kept(self, cg: WatchedCgroup) -> None:
        for fd in cg.fds.values():
            os.close(fd)
        self.fd_budget.give(len(cg.fds), kept=True)
        cg.fds.clear()

    def _read_kept(self, cg: WatchedCgroup, name: str) -> bytes | None:
        fd = cg.fds.get(name)
        if fd is None:
            return None
        try:
            return held_io.pread(fd, 4096, 0)  # a kept cgroupfs fd: never blocks
        except OSError as e:
            if e.errno in GONE:
                return None
            raise

    @locked
    def unwatch(self, path: str) -> None:
        cg = self.cgroups.pop(path, None)
        if cg is None:
            return
        self._release_sources(cg)
        self._close_kept(cg)
        if cg.short:
            self.short -= 1

    # -- reacting ------------------------------------------------------------------------
    def _reread(self, cg: WatchedCgroup, source: str, notified: bool = False,
                text: str | bool | None = False) -> None:
        """Re-read one source and tell what changed; `text`: already read (None: gone)."""
        path = cg.files.get(source)
        if path is None:
            return
        if not notified:
            cg.notified_ns = time.monotonic_ns()
        if isinstance(text, bool):
            if source in cg.fds:
                data = self._read_kept(cg, source)
                text = None if data is None else data.decode(errors="replace")
            else:
                try:
                    text = read_text(path)
                except OSError as e:
                    if e.errno not in OUT_OF_FDS:
                        raise
                    # Not the batch of notices this read is part of: skip just this one.
                    self.fd_budget.missed(str(path))
                    return
        if text is None:
            if source in ("cgroup.events", "cgroup.procs") and self.cgroups.get(cg.path) is cg:
                if source == "cgroup.events" and cg.populated and self.on_emptied is not None:
                    # Emptied and removed before this read (only an empty cgroup can go): its
                    # end is still asked for; the final-read process read it at the notice,
                    # else the rmdir probe kept its CPU.
                    cg.at_empty = None
                    self.on_emptied(cg)
                self.unwatch(cg.path)
                self._tell(self.listener.on_gone, cg)
            elif source == "memory.oom_control":
                self._close_oom(cg)
            return
        if source == "cgroup.procs":
            self._set_populated(cg, bool(text.split()), notified=False)
            return
        values = counter_values(source, text)
        if source == "cgroup.events":
            notified_populated = notified
            if "frozen" in values:
                frozen = bool(values["frozen"])
                if cg.frozen is not None and frozen != cg.frozen:
                    notified_populated = False  # this notification was the freeze
                    self._tell(self.listener.on_frozen, cg, frozen)
                cg.frozen = frozen
            self._set_populated(cg, bool(values.get("populated", 0)), notified_populated)
            return
        old = cg.counters.get(source)
        if old is None:
            old = {} if cg.new else values
        cg.counters[source] = values
        for key, total in values.items():
            delta = total - old.get(key, 0)
            if delta > 0:
                self._tell(self.listener.on_counter, cg, source, key, delta, total)

    def _set_populated(self, cg: WatchedCgroup, populated: bool, notified: bool) -> None:
        first = cg.populated is None
        at_empty: CgroupSample | None = None
        if first and cg.new and not populated and self.on_emptied is not None:
            # A new cgroup's first look, empty: before its first task, or after a whole life
            # (the CPU counter tells). A task that came between the two reads would make its
            # start read as an end: cgroup.events is read again after the counter.
            at_empty = self._cpu_now(cg)
            if at_empty is not None and self._populated_now(cg):
                populated, at_empty = True, None
        if populated and cg.populated is not True:
            cg.v1_tries = 0
            self._defer_v1(cg)
        changed = populated != cg.populated
        # Forwarding, the final-read process polls young cgroups (final_read_notices).
        if populated and changed and "cgroup.events" in cg.fds and self._forwarded is None:
            self._young[cg.path] = (cg, time.monotonic_ns() + YOUNG_FOR_NS)
            self._thread.tick(self._poll_young, YOUNG_POLL_S)
        # An old cgroup's first read is its state, not a change; a new one's is a start, or,
        # new and already empty, maybe a whole life that ended before the watch. Told something
        # changed, yet still empty: a short life (populated 1 then 0) fell between two reads
        # (the listener checks the CPU counter to tell).
        tell = (changed and (not first or cg.new)) or (notified and not populated)
        if tell and not populated and self.on_emptied is not None:
            # The CPU counter first, from the kept fd: the runtime may remove the cgroup any
            # moment now, and the full final read (its own thread) may come too late.
            cg.at_empty = at_empty or self._cpu_now(cg)
            self.on_emptied(cg)
        if not populated and cg.files.keys() - {"cgroup.events", "cgroup.procs"}:
            # Count what happened up to the end (an OOM kill emptying it) before the stop.
            self.deferred.call(0.0, self._refresh_counters, cg)
        if changed:
            cg.populated = populated
            cg.seen_populated |= populated
        if tell and populated:  # emptied: on_emptied above has it, the loop has nothing to do
            self._tell(self.listener.on_populated, cg)

    def _populated_now(self, cg: WatchedCgroup) -> bool:
        """cgroup.events says populated now (its kept fd; by path without one)."""
        data = self._read_kept(cg, "cgroup.events")
        if data is None and "cgroup.events" not in cg.fds:
            text = read_text(f"{self.abs_path(cg.path)}/cgroup.events")
            data = None if text is None else text.encode()
        return events(data)[0] is True

    @locked
    def _poll_young(self) -> bool:
        """In the watch thread: re-read the young cgroups' cgroup.events; False when none."""
        now = time.monotonic_ns()
        for path, (cg, until) in list(self._young.items()):
            if self.cgroups.get(path) is not cg or now > until or cg.populated is False:
                del self._young[path]
            else:
                self._reread(cg, "cgroup.events")
        return bool(self._young)

    def _cpu_now(self, cg: WatchedCgroup) -> CgroupSample | None:
        """The CPU counter, read the moment a cgroup2 cgroup is seen empty."""
        if self.layout.unified is None:
            return None
        mono, wall = time.monotonic_ns(), time.time_ns()
        if "cpu.stat" in cg.fds:
            data = settled(lambda: self._read_kept(cg, "cpu.stat"),
                           tries=3 if self.settle_at_empty else 0)
        else:  # not kept (out of fds): by path
            text = read_text(f"{self.abs_path(cg.path)}/cpu.stat")
            data = None if text is None else text.encode()
        cpu = cpu_sample(flat(data)) if data is not None else None
        if cpu is None or cpu.usage_usec is None:
            return None
        return CgroupSample(cg.path, cg.inode, mono, wall, cpu=cpu, populated=False)

    @locked
    def _on_inotify(self) -> None:
        now = time.monotonic_ns()
        forwarded = self._forwarded
        if forwarded is None:
            self._on_events(self.ino.read_events(), now)
            return
        events, ended = forwarded.read_events()
        if ended:
            self._read_inotify_again(forwarded)
        try:
            self._on_events(events, now)
        finally:
            forwarded.source.done()

    def _on_events(self, events: list[InotifyEvent], now: int) -> None:
        todo: dict[tuple[int, str], WatchedCgroup] = {}
        tree: list[InotifyEvent] = []
        for ev in events:
            parent = self._dir_wds.get(ev.wd)
            if parent is not None and ev.mask & IN_MODIFY and ev.name \
                    and not ev.mask & IN_ISDIR:
                notice_of = self.cgroups.get(parent)
                name = notice_of.names.get(ev.name) if notice_of is not None else None
                if notice_of is not None and name is not None:
                    todo[(id(notice_of), name)] = notice_of
            elif parent is not None or ev.overflow:
                tree.append(ev)
                if parent is not None and ev.mask & IN_ISDIR \
                        and ev.mask & (IN_CREATE | IN_MOVED_TO) \
                        and (has_new := self.cgroups.get(parent)) is not None:
                    # Known before its notices are read: a plain cgroup with children takes
                    # its lifecycle from them (a test prefix empty between two lives).
                    has_new.has_children = True
            elif (owner := self._file_wds.get(ev.wd)) is not None and ev.mask & IN_MODIFY:
                changed = owner.wds.get(ev.wd)
                if changed is not None:
                    todo[(id(owner), changed)] = owner
        # The notices first: a `populated 0` must not wait behind this batch's new
        # directories (each a lookup, a watch, an identification). A cgroup removed in this
        # batch reads as gone (ENODEV), as its IN_DELETE would tell.
        self._reread_notified(todo, now)
        todo = {}
        overflow = False
        for ev in tree:
            if self._thread.closing:  # shutting down: what is left is of no use
                return
            if ev.overflow:
                log.warning("inotify queue overflow: rescanning the cgroup tree")
                overflow = True
                self._forget_removed()  # their IN_DELETE may be among the lost events
                self._watch_subtree("/", report_new=True)
                if self._forwarded is not None:  # the process's map lost them too
                    self._forwarded.source.reset_dirs(self._dir_wds)
                todo.update(((id(cg), source), cg) for cg in list(self.cgroups.values())
                            for source in {*cg.wds.values(), *cg.names.values()})
                continue
            parent = self._dir_wds.get(ev.wd)
            if parent is None:
                continue
            if ev.mask & IN_IGNORED:
                # The directory itself went (IN_DELETE_SELF, then its watch dropped).
                self._dir_wds.pop(ev.wd, None)
                if self._dir_by_path.get(parent) == ev.wd:
                    del self._dir_by_path[parent]
                    self._dir_gone(parent)
            elif ev.mask & IN_ISDIR and ev.name:
                child = f"{parent.rstrip('/')}/{ev.name}"
                if ev.mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_subtree(child, report_new=True, created=True)
                elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                    self._dir_gone(child)
        self._reread_notified(todo, now)
        self._tell_tree(overflow)

    def _reread_notified(self, todo: Mapping[tuple[int, str], WatchedCgroup],
                         now: int) -> None:
        # Several notifications for one file since the last read are one re-read.
        for (_, source), cg in todo.items():
            if self._thread.closing:
                return
            if self.cgroups.get(cg.path) is cg:
                cg.notified_ns = now
                self._reread(cg, source, notified=True)

    def _schedule_poll(self) -> None:
        if self.loop is not None:
            self._poll_handle = self.loop.call_later(self.poll_interval_s, self._poll)

    @locked
    def _poll(self) -> None:
        try:
            for cg in list(self.cgroups.values()):
                for source in sorted(cg.polled):
                    if self.cgroups.get(cg.path) is cg and self.poll_scope.covers(cg.path, source):
                        self._reread(cg, source)
        finally:
            self._schedule_poll()
