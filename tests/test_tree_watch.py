"""The kernel watch's tree part: creations and deletions at any depth, and a full watch table.

A plain directory tree stands in for cgroupfs here (inotify behaves the same on both for
mkdir/rmdir); the churn test covers the real cgroup tree.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.events.lifecycle import identify
from agent.kernel.cgroup_watch import CgroupWatcher
from collectors.layout import CgroupLayout, LayoutKind


class Changes:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    def __call__(self, created: Sequence[str], deleted: Sequence[str], overflow: bool) -> None:
        self.created += created
        self.deleted += deleted


def _watcher(root: Path) -> tuple[CgroupWatcher, Changes]:
    layout = CgroupLayout(kind=LayoutKind.UNIFIED, unified=root, v1={})
    w = CgroupWatcher(layout, identify)
    seen = Changes()
    w.tree_listeners.append(seen)
    return w, seen


async def _until(pred: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred() and loop.time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_creations_and_deletions_at_depth(tmp_path: Path) -> None:
    async def run() -> None:
        (tmp_path / "a" / "b").mkdir(parents=True)
        w, seen = _watcher(tmp_path)
        w.start(asyncio.get_running_loop())
        try:
            assert sorted(w._dir_by_path) == ["/", "/a", "/a/b"]
            (tmp_path / "a" / "b" / "c").mkdir()
            await _until(lambda: seen.created)
            assert seen.created == ["/a/b/c"]
            # A subtree made at once is reported whole (watched before it is listed).
            (tmp_path / "x" / "y").mkdir(parents=True)
            await _until(lambda: len(seen.created) >= 3)
            assert sorted(seen.created[1:]) == ["/x", "/x/y"]
            (tmp_path / "a" / "b" / "c").rmdir()
            await _until(lambda: seen.deleted)
            assert seen.deleted == ["/a/b/c"]
            # /, /a, /a/b, /x, /x/y: the removed one's watch is gone.
            assert len(w._dir_by_path) == 5
        finally:
            w.close()

    asyncio.run(run())


def test_rescan_reports_what_events_did_not(tmp_path: Path) -> None:
    """Removed and made while no event was read (a lost queue): the rescan tells both."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    w, seen = _watcher(tmp_path)
    try:
        w._watch_subtree("/", report_new=False)  # not started: nobody reads the events
        (tmp_path / "a" / "b").rmdir()
        (tmp_path / "n").mkdir()
        w.rescan()
        assert seen.deleted == ["/a/b"] and seen.created == ["/n"]
        assert sorted(w._dir_by_path) == ["/", "/a", "/n"]
    finally:
        w.close()


def test_watch_limit_reached_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full fs.inotify.max_user_watches (simulated: the kernel's ENOSPC) leaves the directory
    to the periodic rescan; its children are still watched."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    w, _ = _watcher(tmp_path)
    real = w.ino.add_watch

    def limited(path: str, mask: int) -> int:
        # The watch goes on through the directory's fd (/proc/self/fd/N): judge its target.
        if os.path.realpath(path).endswith("/a"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mask)

    monkeypatch.setattr(w.ino, "add_watch", limited)
    try:
        w._watch_subtree("/", report_new=False)
        assert sorted(w._dir_by_path) == ["/", "/a/b"]
        assert w.watches_exhausted
    finally:
        w.close()
