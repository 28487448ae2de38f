"""The kernel watch's directory tree: a watch on every directory of the reference tree, so
IN_CREATE reports new cgroups at once and IN_DELETE/IN_IGNORED their removal (mixin of
CgroupWatcher; the listeners hear of both in one call per batch)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agent.kernel.fd_budget import OUT_OF_FDS, FdBudget
from agent.kernel.forwarded_inotify import ForwardedInotify
from agent.kernel.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)
from agent.kernel.kernfs import GONE
from agent.kernel.path_index import PathIndex
from agent.kernel.watch_thread import locked
from agent.kernel.watched import TreeListener, WatchedCgroup, WatchListener
from agent.model.snapshot import WorkloadIdentity

log = logging.getLogger("agent.kernel.watch")

#: IN_MODIFY on a directory reports its files' notices by name (cgroup.events, ...): one watch
#: per cgroup instead of one per file, each of which is a path lookup that waits behind churn.
DIR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR | IN_MODIFY


class TreeWatch:
    """Mixin of CgroupWatcher: the directories watched, by path and by watch descriptor."""

    cgroups: PathIndex[WatchedCgroup]
    listener: WatchListener
    tree_listeners: list[TreeListener]
    follow_new: bool
    watches_exhausted: bool
    fd_budget: FdBudget
    ino: Inotify
    lock: threading.RLock
    identify: Callable[[str, int], WorkloadIdentity]
    _created: list[str]
    _deleted: list[str]
    _dir_wds: dict[int, str]
    _dir_by_path: PathIndex[int]
    _forwarded: ForwardedInotify | None

    if TYPE_CHECKING:  # provided by CgroupWatcher and LoopBridge
        def _tell(self, fn: Callable[..., None], *args: object) -> None: ...
        def abs_path(self, path: str) -> str: ...
        def unwatch(self, path: str) -> None: ...
        def watch(self, identity: WorkloadIdentity, new: bool,
                  v1_paths: Mapping[str, str] | None = None,
                  dir_fd: int | None = None) -> WatchedCgroup | None: ...

    # -- the directory tree: IN_CREATE reports new cgroups at once -----------------------
    def _watch_subtree(self, top: str, report_new: bool, created: bool = False) -> None:
        """`created`: `top` was just reported by IN_CREATE/IN_MOVED_TO (gone already: told as
        unseen; a rescan's listing is not: it may name a directory unwatched a moment ago)."""
        # The watch goes on before the listing: a child made meanwhile is listed or reported.
        # One path lookup per directory (its fd); the rest goes through the fd, since each
        # cgroupfs lookup may wait behind the runtime's mkdir/rmdir.
        stack = [top]
        while stack:
            rel = stack.pop()
            try:
                dfd = os.open(self.abs_path(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in GONE:
                    if created and rel == top and self.follow_new and rel not in self.cgroups:
                        # Made and removed before this got to it (its IN_CREATE came late).
                        self._tell(self.listener.on_unseen, rel)
                    continue
                if e.errno not in OUT_OF_FDS:
                    raise
                # Not watched for now: the next rescan finds it.
                self.fd_budget.refused(f"directory {rel}", emfile=True)
                continue
            try:
                self._watch_dir(rel, dfd, report_new)
                if rel != "/" and (parent := self.cgroups.get(rel.rsplit("/", 1)[0] or "/")):
                    parent.has_children = True
                if report_new and self.follow_new and rel not in self.cgroups \
                        and self.watch(self.identify(rel, os.fstat(dfd).st_ino), new=True,
                                       dir_fd=dfd) is None and created and rel == top:
                    # Removed between the open of its directory and of its files: nothing
                    # was told of it, as when the open itself fails.
                    self._tell(self.listener.on_unseen, rel)
                with os.scandir(dfd) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(f"{rel.rstrip('/')}/{entry.name}")
            except OSError as e:
                if e.errno in OUT_OF_FDS:  # scandir's dup: the next rescan lists it
                    self.fd_budget.refused(f"directory {rel}", emfile=True)
                elif e.errno not in GONE:
                    raise
            finally:
                os.close(dfd)

    def _watch_dir(self, rel: str, dfd: int, report_new: bool) -> None:
        if rel in self._dir_by_path:
            return
        try:
            wd = self.ino.add_watch(f"/proc/self/fd/{dfd}", DIR_MASK)
        except OSError as e:
            if e.errno in GONE:
                return
            if e.errno != errno.ENOSPC:
                raise
            # The watch table is full: this directory is found by the periodic
            # rescan instead of at once. Said once, not per directory.
            if not self.watches_exhausted:
                log.warning("inotify watch limit reached (fs.inotify.max_user_watches):"
                            " new cgroups below %s are found by the periodic rescan", rel)
            self.watches_exhausted = True
            return
        self._dir_wds[wd] = rel
        self._dir_by_path[rel] = wd
        if self._forwarded is not None:
            self._forwarded.source.tell_dir(wd, rel)
        if report_new:
            self._created.append(rel)

    def _dir_gone(self, rel: str) -> None:
        for path in self._dir_by_path.subtree(rel):
            wd = self._dir_by_path.pop(path)
            self._dir_wds.pop(wd, None)
            self.ino.rm_watch(wd)
            self._deleted.append(path)
        if rel not in self._deleted:
            self._deleted.append(rel)
        for path in self.cgroups.subtree(rel):
            cg = self.cgroups.get(path)
            if cg is not None:
                self.unwatch(path)
                self._tell(self.listener.on_gone, cg)

    @locked
    def rescan(self) -> None:
        """After a full discovery scan: forget removed directories, watch new ones."""
        self._forget_removed()
        self._watch_subtree("/", report_new=True)
        self._tell_tree(overflow=False)

    def _forget_removed(self) -> None:
        for rel in [r for r in self._dir_by_path if not os.path.isdir(self.abs_path(r))]:
            if rel in self._dir_by_path:
                self._dir_gone(rel)

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
