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
import contextlib
import errno
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.core.process_limits import raise_nofile_limit
from agent.kernel.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)
from agent.kernel.kernfs import (
    GONE,
    counter_values,
    has_subdir,
    oom_eventfd,
    read_text,
    v1_dir,
)
from agent.kernel.psi import PsiRefused, PsiWaiter, open_trigger
from agent.kernel.watch_thread import LoopBridge, locked
from agent.kernel.watched import (
    NoListener,
    PollScope,
    PsiTrigger,
    TreeListener,
    WatchedCgroup,
    WatchListener,
)
from agent.model.snapshot import WorkloadIdentity
from collectors.layout import CgroupLayout

log = logging.getLogger("agent.kernel.watch")

_DIR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR
#: v1 controllers whose files the watcher reads.
_V1_USED = ("memory", "pids")
#: How often, and how long, to wait for a new process to reach its v1 cgroups.
_V1_RETRY_S, _V1_RETRIES = 0.05, 40
#: Re-reads after an OOM eventfd wake-up (s).
_OOM_REREAD_S = (0.02, 0.1, 0.5)


class CgroupWatcher(LoopBridge):
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
        #: Per-cgroup changes (populated, counters, pressure, gone): the events component.
        self.listener: WatchListener = listener or NoListener()
        #: Directories made and removed: the daemon (discovery, collection, the reader's fds).
        self.tree_listeners: list[TreeListener] = []
        #: Follow the files of every new cgroup at once (set when a listener wants them).
        self.follow_new = listener is not None
        #: fs.inotify.max_user_watches reached: new cgroups are then found by the rescan.
        self.watches_exhausted = False
        self._created: list[str] = []
        self._deleted: list[str] = []
        self.identify = identify
        self.psi = psi
        self.poll_interval_s = poll_interval_s
        LoopBridge.__init__(self)
        #: Called in the watch thread the moment a cgroup is seen empty (populated 0), before
        #: anything else: the final read must not wait (the events component submits it).
        self.on_emptied: Callable[[WatchedCgroup], None] | None = None
        self.ino = Inotify()
        self.psi_waiter = PsiWaiter(self._on_psi)
        self.cgroups: dict[str, WatchedCgroup] = {}
        self._dir_wds: dict[int, str] = {}
        self._dir_by_path: dict[str, int] = {}
        self._file_wds: dict[int, WatchedCgroup] = {}
        self._psi_fds: dict[int, WatchedCgroup] = {}
        self._poll_handle: asyncio.TimerHandle | None = None
        self.psi_error: str | None = None
        #: Which polled v1 counters can move (PollScope); all until told.
        self.poll_scope = PollScope()

    # -- lifecycle -----------------------------------------------------------------------
    @locked
    def start(self, loop: asyncio.AbstractEventLoop, watch_tree: bool = True) -> None:
        raise_nofile_limit()
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.psi_waiter.start(loop)
        if watch_tree:
            self._watch_subtree("/", report_new=False)
        self._thread.add(self.ino.fd, self._on_inotify)
        self._thread.start()
        self._schedule_poll()

    def close(self) -> None:
        self._thread.close()  # first: nothing runs in the watch thread from here on
        with self.lock:
            for path in list(self.cgroups):
                self.unwatch(path)
            if self._poll_handle is not None:
                self._poll_handle.cancel()
            self.ino.close()
            self.psi_waiter.close()

    def abs_path(self, path: str) -> Path:
        return self.root if path == "/" else self.root / path.lstrip("/")

    # -- the directory tree: IN_CREATE reports new cgroups at once -----------------------
    def _watch_subtree(self, top: str, report_new: bool) -> None:
        # The watch goes on before the listing: a child made meanwhile is listed or reported.
        stack = [top]
        while stack:
            rel = stack.pop()
            if rel not in self._dir_by_path:
                try:
                    wd = self.ino.add_watch(str(self.abs_path(rel)), _DIR_MASK)
                except OSError as e:
                    if e.errno in GONE:
                        continue
                    if e.errno != errno.ENOSPC:
                        raise
                    # The watch table is full: this directory is found by the periodic
                    # rescan instead of at once. Said once, not per directory.
                    if not self.watches_exhausted:
                        log.warning("inotify watch limit reached (fs.inotify.max_user_watches):"
                                    " new cgroups below %s are found by the periodic rescan", rel)
                    self.watches_exhausted = True
                else:
                    self._dir_wds[wd] = rel
                    self._dir_by_path[rel] = wd
                    if report_new:
                        self._created.append(rel)
            if rel != "/" and (parent := self.cgroups.get(rel.rsplit("/", 1)[0] or "/")):
                parent.has_children = True
            if report_new and self.follow_new and rel not in self.cgroups:
                self._new_cgroup(rel)
            try:
                with os.scandir(self.abs_path(rel)) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(f"{rel.rstrip('/')}/{entry.name}")
            except OSError as e:
                if e.errno not in GONE:
                    raise

    def _new_cgroup(self, rel: str) -> None:
        try:
            inode = os.stat(self.abs_path(rel)).st_ino
        except OSError:
            return
        self.watch(self.identify(rel, inode), new=True)

    def _dir_gone(self, rel: str) -> None:
        prefix = rel.rstrip("/") + "/"
        for path in [p for p in self._dir_by_path if p == rel or p.startswith(prefix)]:
            wd = self._dir_by_path.pop(path)
            self._dir_wds.pop(wd, None)
            self.ino.rm_watch(wd)
            self._deleted.append(path)
        if rel not in self._deleted:
            self._deleted.append(rel)
        for path in [p for p in self.cgroups if p == rel or p.startswith(prefix)]:
            cg = self.cgroups.get(path)
            if cg is not None:
                self.unwatch(path)
                self._tell(self.listener.on_gone, cg)

    # -- one cgroup ----------------------------------------------------------------------
    @locked
    def watch(
        self, identity: WorkloadIdentity, new: bool, v1_paths: Mapping[str, str] | None = None
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
        cg.has_children = has_subdir(d)
        self.cgroups[cg.path] = cg
        if self.layout.unified is not None:
            self._add_file(cg, "cgroup.events", d / "cgroup.events")
            for source in ("memory.events", "pids.events"):
                local = d / f"{source}.local"
                self._add_file(cg, source, local if local.exists() else d / source)
            if self.psi is not None and cg.path != "/":
                for res in self.psi.resources:
                    self._add_psi(cg, res, d / f"{res}.pressure")
        else:
            # Legacy v1: no cgroup.events; emptiness is polled from cgroup.procs.
            cg.files["cgroup.procs"] = d / "cgroup.procs"
            cg.polled.add("cgroup.procs")
        if cg.path in self.cgroups:
            self._setup_v1(cg, v1_paths, retry=False)
        for source in list(cg.files):
            if cg.path in self.cgroups:
                self._reread(cg, source)
        return self.cgroups.get(cg.path)
    @locked
    def unwatch(self, path: str) -> None:
        cg = self.cgroups.pop(path, None)
        if cg is None:
            return
        for wd in cg.wds:
            self._file_wds.pop(wd, None)
            self.ino.rm_watch(wd)
        cg.wds.clear()
        for fd in list(cg.psi):
            self._psi_fds.pop(fd, None)
            self.psi_waiter.discard(fd)
        cg.psi.clear()
        self._close_oom(cg)

    def _add_file(self, cg: WatchedCgroup, source: str, path: Path) -> None:
        try:
            wd = self.ino.add_watch(str(path), IN_MODIFY)
        except OSError as e:
            if e.errno in GONE:
                return  # absent on this kernel or controller
            raise
        cg.files[source] = path
        cg.wds[wd] = source
        self._file_wds[wd] = cg

    def _add_psi(self, cg: WatchedCgroup, res: str, path: Path) -> None:
        assert self.psi is not None
        try:
            fd = open_trigger(path, self.psi.stall_us, self.psi.window_us)
        except PsiRefused as e:
            self.psi_error = str(e)
            log.warning("%s; pressure events are off", e)
            self.psi = None
            return
        if fd is None:
            return
        self.psi_waiter.register(fd)
        cg.psi[fd] = res
        self._psi_fds[fd] = cg

    # -- v1 memory and pids hierarchies --------------------------------------------------
    def _setup_v1(self, cg: WatchedCgroup, v1_paths: Mapping[str, str] | None, retry: bool) -> None:
        wanted = [c for c in _V1_USED if self.layout.v1_root(c) is not None and c not in cg.v1_dirs]
        for ctrl in wanted:
            d = v1_dir(self.layout, cg.path, ctrl, (v1_paths or {}).get(ctrl))
            if d is None:
                continue
            cg.v1_dirs[ctrl] = d
            if ctrl == "memory":
                self._add_v1_source(cg, "memory.failcnt", d / "memory.failcnt")
                self._add_oom_eventfd(cg, d / "memory.oom_control")
            else:
                self._add_v1_source(cg, "pids.events", d / "pids.events")
        missing = [c for c in wanted if c not in cg.v1_dirs]
        if retry and missing and not cg.v1_pending and cg.v1_tries < _V1_RETRIES and self.loop:
            # A runtime moves a new process into each hierarchy in turn: ask again shortly.
            cg.v1_tries += 1
            cg.v1_pending = True
            self._later(_V1_RETRY_S, self._retry_v1, cg)

    @locked
    def _retry_v1(self, cg: WatchedCgroup) -> None:
        cg.v1_pending = False
        if self.cgroups.get(cg.path) is cg:
            self._setup_v1(cg, None, retry=True)

    def _add_v1_source(self, cg: WatchedCgroup, source: str, path: Path) -> None:
        if path.exists():
            cg.files[source] = path
            cg.polled.add(source)
            self._reread(cg, source)

    def _add_oom_eventfd(self, cg: WatchedCgroup, control: Path) -> None:
        fds = oom_eventfd(control)
        if fds is None:
            return
        cg.oom_fds = fds
        cg.files["memory.oom_control"] = control
        cg.polled.add("memory.oom_control")  # safety net: see _on_oom_eventfd
        self._reread(cg, "memory.oom_control")
        self._thread.add(fds[0], functools.partial(self._on_oom_eventfd, cg))

    def _close_oom(self, cg: WatchedCgroup) -> None:
        if cg.oom_fds is None:
            return
        efd, cfd = cg.oom_fds
        cg.oom_fds = None
        self._thread.remove(efd)
        os.close(efd)
        os.close(cfd)

    # -- reacting ------------------------------------------------------------------------
    def _reread(self, cg: WatchedCgroup, source: str, notified: bool = False) -> None:
        path = cg.files.get(source)
        if path is None:
            return
        if not notified:
            cg.notified_ns = time.monotonic_ns()
        text = read_text(path)
        if text is None:
            if source in ("cgroup.events", "cgroup.procs") and self.cgroups.get(cg.path) is cg:
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
        if populated and cg.populated is not True:
            cg.v1_tries = 0
            self._setup_v1(cg, None, retry=True)
        changed = populated != cg.populated
        # An old cgroup's first read is its state, not a change; a new one's is a start, or,
        # new and already empty, maybe a whole life that ended before the watch. Told something
        # changed, yet still empty: a short life (populated 1 then 0) fell between two reads
        # (the listener checks the CPU counter to tell).
        tell = (changed and (not first or cg.new)) or (notified and not populated)
        if tell and not populated and self.on_emptied is not None:
            self.on_emptied(cg)
        if not populated:
            # Count what happened up to the end (an OOM kill emptying it) before the stop.
            self._refresh_counters(cg)
        if changed:
            cg.populated = populated
            cg.seen_populated |= populated
        if tell:
            self._tell(self.listener.on_populated, cg, populated)

    @locked
    def rescan(self) -> None:
        """After a full discovery scan: forget removed directories, watch new ones."""
        for rel in [r for r in self._dir_by_path if not os.path.isdir(self.abs_path(r))]:
            if rel in self._dir_by_path:
                self._dir_gone(rel)
        self._watch_subtree("/", report_new=True)
        self._tell_tree(overflow=False)

    def _tell_tree(self, overflow: bool) -> None:
        created, deleted = self._created, self._deleted
        self._created, self._deleted = [], []
        if not (created or deleted or overflow):
            return
        for tell in list(self.tree_listeners):
            try:
                self._tell(tell, created, deleted, overflow)
            except Exception:
                log.exception("tree listener failed")

    @locked
    def _on_inotify(self) -> None:
        now = time.monotonic_ns()
        todo: dict[tuple[int, str], WatchedCgroup] = {}
        overflow = False
        for ev in self.ino.read_events():
            if self._thread.closing:  # shutting down: what is left is of no use
                return
            if ev.overflow:
                log.warning("inotify queue overflow: rescanning the cgroup tree")
                overflow = True
                self._watch_subtree("/", report_new=True)
                for cg in list(self.cgroups.values()):
                    for source in cg.wds.values():
                        todo[(id(cg), source)] = cg
                continue
            parent = self._dir_wds.get(ev.wd)
            if parent is not None:
                if ev.mask & IN_IGNORED:
                    # The directory itself went (IN_DELETE_SELF, then its watch dropped).
                    self._dir_wds.pop(ev.wd, None)
                    if self._dir_by_path.get(parent) == ev.wd:
                        del self._dir_by_path[parent]
                        self._dir_gone(parent)
                elif ev.mask & IN_ISDIR and ev.name:
                    child = f"{parent.rstrip('/')}/{ev.name}"
                    if ev.mask & (IN_CREATE | IN_MOVED_TO):
                        self._watch_subtree(child, report_new=True)
                    elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                        self._dir_gone(child)
                continue
            owner = self._file_wds.get(ev.wd)
            if owner is not None and ev.mask & IN_MODIFY:
                changed = owner.wds.get(ev.wd)
                if changed is not None:
                    todo[(id(owner), changed)] = owner
        # Several notifications for one file since the last read are one re-read.
        for (_, source), cg in todo.items():
            if self.cgroups.get(cg.path) is cg:
                cg.notified_ns = now
                self._reread(cg, source, notified=True)
        self._tell_tree(overflow)

    @locked
    def _on_oom_eventfd(self, cg: WatchedCgroup) -> None:
        if cg.oom_fds is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(cg.oom_fds[0])
        # Also signalled when the cgroup goes away: the re-read then finds nothing.
        self._refresh_counters(cg)
        # The eventfd fires when the OOM starts, the kill is counted a moment later.
        for delay in _OOM_REREAD_S:
            self._later(delay, self._refresh_if_watched, cg)

    @locked
    def _refresh_if_watched(self, cg: WatchedCgroup) -> None:
        if self.cgroups.get(cg.path) is cg:
            self._refresh_counters(cg)

    def _refresh_counters(self, cg: WatchedCgroup) -> None:
        for source in [s for s in cg.files if s not in ("cgroup.events", "cgroup.procs")]:
            if self.cgroups.get(cg.path) is cg or source == "memory.oom_control":
                self._reread(cg, source)

    @locked
    def _on_psi(self, fd: int, mask: int) -> None:
        cg = self._psi_fds.get(fd)
        if cg is None:
            return
        res = cg.psi.get(fd, "")
        if mask & select.EPOLLERR:
            # The cgroup was removed: the trigger is dead (read gives ENODEV).
            self._psi_fds.pop(fd, None)
            cg.psi.pop(fd, None)
            self.psi_waiter.discard(fd)
            return
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode(errors="replace")
        except OSError:
            text = ""
        self._tell(self.listener.on_pressure, cg, res, text)

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
