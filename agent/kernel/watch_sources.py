"""The kernel watch's slower sources, set up off its notice thread (see deferred.py).

- memory.events / pids.events (cgroup2): notices come through the directory's watch; which of
  them a cgroup has is looked up here.
- v1 memory and pids hierarchies: `memory.failcnt` and `pids.events` (polled, no notices) and
  the `memory.oom_control` eventfd.
- PSI triggers: armed once a cgroup has lived `PSI_DELAY_S` (a shorter life has no pressure
  window to speak of, and each trigger takes cgroup_mutex to arm and an RCU grace period to
  close).
- The counters re-read when a cgroup empties (an OOM kill that emptied it counted before the
  stop).

Lookups and reads run without the watcher's lock; only the bookkeeping takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import select
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agent.kernel.deferred import DeferredWork
from agent.kernel.fd_budget import OUT_OF_FDS, FdBudget
from agent.kernel.inotify import IN_MODIFY, Inotify
from agent.kernel.kernfs import GONE, oom_eventfd, read_text, v1_dir
from agent.kernel.path_index import PathIndex
from agent.kernel.psi import PsiRefused, PsiWaiter, open_trigger
from agent.kernel.watch_thread import WatchThread
from agent.kernel.watched import PsiTrigger, WatchedCgroup, WatchListener
from collectors.layout import CgroupLayout

log = logging.getLogger("agent.kernel.watch")

#: v1 controllers whose files the watcher reads.
_V1_USED = ("memory", "pids")
#: How often, and how long, to wait for a new process to reach its v1 cgroups.
_V1_RETRY_S, _V1_RETRIES = 0.05, 40
#: Re-reads after an OOM eventfd wake-up (s).
_OOM_REREAD_S = (0.02, 0.1, 0.5)
#: A new cgroup gets its PSI triggers once it has lived this long (s).
PSI_DELAY_S = 1.0
#: Sources whose notices come through the cgroup2 directory watch, as file names.
_NOTIFIED = ("memory.events", "pids.events")


class SlowSources:
    """Mixin of CgroupWatcher: what it sets up through `deferred`."""

    layout: CgroupLayout
    cgroups: dict[str, WatchedCgroup]
    listener: WatchListener
    psi: PsiTrigger | None
    psi_error: str | None
    psi_waiter: PsiWaiter
    fd_budget: FdBudget
    short: int
    deferred: DeferredWork
    ino: Inotify
    lock: threading.RLock
    loop: asyncio.AbstractEventLoop | None
    _thread: WatchThread
    _psi_fds: dict[int, WatchedCgroup]
    _file_wds: dict[int, WatchedCgroup]
    _dir_by_path: PathIndex[int]

    if TYPE_CHECKING:  # provided by CgroupWatcher and LoopBridge
        def _tell(self, fn: Callable[..., None], *args: object) -> None: ...
        def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None: ...
        def _reread(self, cg: WatchedCgroup, source: str, notified: bool = False,
                    text: str | bool | None = False) -> None: ...
        def abs_path(self, path: str) -> str: ...

    def _watched(self, cg: WatchedCgroup) -> bool:
        return self.cgroups.get(cg.path) is cg

    def _mark_short(self, cg: WatchedCgroup) -> None:
        """Under the lock: `cg` lacks an fd it would have kept (counted once per cgroup)."""
        if not cg.short and self._watched(cg):
            cg.short = True
            self.short += 1

    def _out_of_fds(self, cg: WatchedCgroup, what: str, e: OSError) -> None:
        """An open of `what` for `cg` failed: EMFILE/ENFILE marks the cgroup short (re-raised
        otherwise)."""
        if e.errno not in OUT_OF_FDS:
            raise e
        self.fd_budget.refused(what, emfile=True)
        with self.lock:
            self._mark_short(cg)

    # -- cgroup2 memory.events / pids.events ---------------------------------------------
    def _event_sources(self, cg: WatchedCgroup) -> None:
        d = self.abs_path(cg.path)
        found: dict[str, str] = {}
        for source in _NOTIFIED:
            for path in (f"{d}/{source}.local", f"{d}/{source}"):
                if os.path.exists(path):
                    found[source] = path
                    break
        texts = {} if cg.new else {s: read_text(p) for s, p in found.items()}
        with self.lock:
            if not self._watched(cg):
                return
            dir_watched = cg.path in self._dir_by_path
            for source, path in found.items():
                if dir_watched:
                    cg.names[os.path.basename(path)] = source
                    cg.files[source] = path
                else:
                    self._add_file(cg, source, path)
            for source in found:
                if self._watched(cg):
                    self._reread(cg, source, text=texts.get(source, False))

    def _add_file(self, cg: WatchedCgroup, source: str, path: str) -> None:
        """A watch of the file itself: for cgroups whose directory is not watched."""
        try:
            wd = self.ino.add_watch(path, IN_MODIFY)
        except OSError as e:
            if e.errno in GONE:
                return  # absent on this kernel or controller
            raise
        cg.files[source] = path
        cg.wds[wd] = source
        self._file_wds[wd] = cg

    # -- v1 memory and pids hierarchies --------------------------------------------------
    def _setup_v1(self, cg: WatchedCgroup, v1_paths: Mapping[str, str] | None,
                  retry: bool) -> None:
        """In the deferred thread: find the v1 directories, then register under the lock."""
        with self.lock:
            cg.v1_pending = False
            if not self._watched(cg):
                return
            wanted = [c for c in _V1_USED
                      if self.layout.v1_root(c) is not None and c not in cg.v1_ctrls]
        dirs = {}
        for ctrl in wanted:
            d = v1_dir(self.layout, cg.path, ctrl, (v1_paths or {}).get(ctrl))
            if d is not None:
                dirs[ctrl] = d
        sources: dict[str, tuple[str, str | None]] = {}
        oom: tuple[int, int] | None = None
        for ctrl, d in dirs.items():
            name = "memory.failcnt" if ctrl == "memory" else "pids.events"
            if os.path.exists(f"{d}/{name}"):
                sources[name] = (f"{d}/{name}", read_text(f"{d}/{name}"))
            if ctrl == "memory":
                oom = self._open_oom(cg, f"{d}/memory.oom_control")
        with self.lock:
            if not self._watched(cg):
                if oom is not None:
                    os.close(oom[0])
                    os.close(oom[1])
                    self.fd_budget.give(2)
                return
            cg.v1_ctrls.update(dirs)
            for source, (path, text) in sources.items():
                cg.files[source] = path
                cg.polled.add(source)
                self._reread(cg, source, text=text)
            if oom is not None and self._watched(cg):
                self._attach_oom(cg, oom, f"{dirs['memory']}/memory.oom_control")
            missing = [c for c in wanted if c not in cg.v1_ctrls]
            if retry and missing and cg.v1_tries < _V1_RETRIES and self._watched(cg):
                # A runtime moves a new process into each hierarchy in turn: ask again soon.
                cg.v1_tries += 1
                self._defer_v1(cg, _V1_RETRY_S)

    def _open_oom(self, cg: WatchedCgroup, control: str) -> tuple[int, int] | None:
        """The v1 OOM eventfd and its control fd, within the fd budget."""
        if not self.fd_budget.take(2, "v1 OOM eventfd"):
            with self.lock:
                self._mark_short(cg)
            return None
        try:
            oom = oom_eventfd(control)
        except OSError as e:
            self._out_of_fds(cg, "v1 OOM eventfd", e)
            oom = None
        if oom is None:
            self.fd_budget.give(2)
        return oom

    def _defer_v1(self, cg: WatchedCgroup, delay_s: float = 0.0,
                  v1_paths: Mapping[str, str] | None = None, retry: bool = True) -> None:
        if cg.v1_pending or not any(self.layout.v1_root(c) is not None for c in _V1_USED):
            return
        cg.v1_pending = True
        self.deferred.call(delay_s, self._setup_v1, cg, v1_paths, retry)

    def _attach_oom(self, cg: WatchedCgroup, fds: tuple[int, int], control: str) -> None:
        self._close_oom(cg)
        cg.oom_fds = fds
        cg.files["memory.oom_control"] = control
        cg.polled.add("memory.oom_control")  # safety net: see _on_oom_eventfd
        # Waited on before the first read: a read that finds the cgroup gone closes the fds
        # (_close_oom), and a closed fd's number may already be another thread's file.
        self._thread.add(fds[0], functools.partial(self._on_oom_eventfd, cg))
        self._reread(cg, "memory.oom_control")

    def _close_oom(self, cg: WatchedCgroup) -> None:
        if cg.oom_fds is None:
            return
        efd, cfd = cg.oom_fds
        cg.oom_fds = None
        self._thread.remove(efd)
        os.close(efd)
        os.close(cfd)
        self.fd_budget.give(2)

    def _on_oom_eventfd(self, cg: WatchedCgroup) -> None:
        with self.lock:
            if cg.oom_fds is None:
                return
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(cg.oom_fds[0])
        # Also signalled when the cgroup goes away: the re-read then finds nothing.
        self.deferred.call(0.0, self._refresh_counters, cg)
        # The eventfd fires when the OOM starts, the kill is counted a moment later.
        for delay in _OOM_REREAD_S:
            self.deferred.call(delay, self._refresh_counters, cg)

    def _refresh_counters(self, cg: WatchedCgroup) -> None:
        """Re-read every counter file of the cgroup (reads outside the lock)."""
        with self.lock:
            todo = {s: p for s, p in cg.files.items()
                    if s not in ("cgroup.events", "cgroup.procs")
                    and (self._watched(cg) or s == "memory.oom_control")}
        texts = {s: read_text(p) for s, p in todo.items()}
        with self.lock:
            for source, text in texts.items():
                if self._watched(cg) or source == "memory.oom_control":
                    self._reread(cg, source, text=text)

    # -- PSI triggers --------------------------------------------------------------------
    def _arm_psi(self, cg: WatchedCgroup) -> None:
        psi = self.psi
        if psi is None or not self._watched(cg) or cg.psi:
            return
        if not self.fd_budget.take(len(psi.resources), "PSI triggers"):
            with self.lock:
                self._mark_short(cg)
            return
        d = self.abs_path(cg.path)
        opened: list[tuple[int, str]] = []
        try:
            for res in psi.resources:
                fd = open_trigger(f"{d}/{res}.pressure", psi.stall_us, psi.window_us)
                if fd is not None:
                    opened.append((fd, res))
        except PsiRefused as e:
            self.psi_error = str(e)
            log.warning("%s; pressure events are off", e)
            self.psi = None
        except OSError as e:
            self._out_of_fds(cg, "PSI triggers", e)
        # Those not opened go back now; the others once closed (PsiWaiter.discard).
        self.fd_budget.give(len(psi.resources) - len(opened))
        with self.lock:
            keep = self._watched(cg) and self.psi is not None
            for fd, res in opened:
                if keep:
                    self.psi_waiter.register(fd)
                    cg.psi[fd] = res
                    self._psi_fds[fd] = cg
                else:
                    self.psi_waiter.discard(fd)

    def _on_psi(self, fd: int, mask: int) -> None:
        with self.lock:
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

    def _release_sources(self, cg: WatchedCgroup) -> None:
        """Under the lock, when a cgroup is unwatched: its file watches, triggers, eventfd."""
        for wd in cg.wds:
            self._file_wds.pop(wd, None)
            self.ino.rm_watch(wd)
        cg.wds.clear()
        for fd in list(cg.psi):
            self._psi_fds.pop(fd, None)
            self.psi_waiter.discard(fd)
        cg.psi.clear()
        self._close_oom(cg)

