"""inotify watches on every directory of the reference cgroup tree.

inotify is not recursive: one watch per cgroup directory, added as the tree grows. The caller
drains `changes()` after the fd becomes readable; an IN_Q_OVERFLOW means events were lost and
the caller must rescan the whole tree.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.kernel.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)

log = logging.getLogger("agent.discovery")

_MASK = IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR


@dataclass
class TreeChanges:
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    overflow: bool = False


class CgroupTreeWatch:
    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.inotify = Inotify()
        self._paths: dict[int, str] = {}
        self._wds: dict[str, int] = {}
        self.watches_exhausted = False

    @property
    def fd(self) -> int:
        return self.inotify.fd

    @property
    def watch_count(self) -> int:
        return len(self._wds)

    def _abs(self, rel: str) -> str:
        return self.root if rel == "/" else self.root + rel

    def watch(self, rel: str) -> bool:
        """Watch one cgroup directory (relative path "/..."). False if it vanished."""
        if rel in self._wds:
            return True
        try:
            wd = self.inotify.add_watch(self._abs(rel), _MASK)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            if e.errno == errno.ENOSPC:
                # fs.inotify.max_user_watches reached: this directory is found by the periodic
                # rescan instead of at once. Said once, not per directory.
                if not self.watches_exhausted:
                    log.warning("inotify watch limit reached (fs.inotify.max_user_watches): "
                                "new cgroups below %s are found by the periodic rescan", rel)
                self.watches_exhausted = True
                return True
            raise
        self._paths[wd] = rel
        self._wds[rel] = wd
        return True

    def watch_subtree(self, rel: str) -> list[str]:
        """Watch `rel` and everything below it; returns the directories found (rel paths).

        Watches are added before listing, so a child created meanwhile is either listed or
        reported by an event: never lost.
        """
        found: list[str] = []
        stack = [rel]
        while stack:
            cur = stack.pop()
            if not self.watch(cur):
                continue
            found.append(cur)
            try:
                with os.scandir(self._abs(cur)) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(("" if cur == "/" else cur) + "/" + entry.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
        return found

    def set_watched(self, rels: set[str]) -> None:
        """After a full rescan: watch exactly these directories."""
        for rel in list(self._wds):
            if rel not in rels:
                self.forget(rel)
        for rel in rels:
            self.watch(rel)

    def forget(self, rel: str) -> None:
        wd = self._wds.pop(rel, None)
        if wd is not None:
            self._paths.pop(wd, None)
            self.inotify.rm_watch(wd)

    def changes(self) -> TreeChanges:
        out = TreeChanges()
        for ev in self.inotify.read_events():
            if ev.overflow:
                out.overflow = True
                continue
            if ev.mask & IN_IGNORED:
                rel = self._paths.pop(ev.wd, None)
                if rel is not None:
                    self._wds.pop(rel, None)
                continue
            parent = self._paths.get(ev.wd)
            if parent is None or not ev.name or not ev.mask & IN_ISDIR:
                continue
            rel = ("" if parent == "/" else parent) + "/" + ev.name
            if ev.mask & (IN_CREATE | IN_MOVED_TO):
                out.created.extend(self.watch_subtree(rel))
            elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                out.deleted.append(rel)
                for sub in [p for p in self._wds if p == rel or p.startswith(rel + "/")]:
                    self.forget(sub)
        return out

    def close(self) -> None:
        self.inotify.close()
        self._paths.clear()
        self._wds.clear()
