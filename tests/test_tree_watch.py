"""The inotify tree watch: creations and deletions at any depth, and a full watch table."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from agent.kernel.tree_watch import CgroupTreeWatch


def _drain(w: CgroupTreeWatch, want: int = 1, timeout: float = 2.0) -> tuple[list[str], list[str]]:
    created: list[str] = []
    deleted: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(created) + len(deleted) < want:
        c = w.changes()
        created += c.created
        deleted += c.deleted
        time.sleep(0.01)
    return created, deleted


def test_creations_and_deletions_at_depth(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    w = CgroupTreeWatch(tmp_path)
    try:
        assert sorted(w.watch_subtree("/")) == ["/", "/a", "/a/b"]
        (tmp_path / "a" / "b" / "c").mkdir()
        created, _ = _drain(w)
        assert created == ["/a/b/c"]
        # A subtree moved in at once is reported whole (watched before it is listed).
        (tmp_path / "x" / "y").mkdir(parents=True)
        created, _ = _drain(w, want=2)
        assert sorted(created) == ["/x", "/x/y"]
        (tmp_path / "a" / "b" / "c").rmdir()
        _, deleted = _drain(w)
        assert deleted == ["/a/b/c"]
        assert w.watch_count == 5  # /, /a, /a/b, /x, /x/y: the removed one is forgotten
    finally:
        w.close()


def test_watch_limit_reached_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full fs.inotify.max_user_watches (simulated: the kernel's ENOSPC) leaves the directory
    to the periodic rescan; its children are still listed."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    w = CgroupTreeWatch(tmp_path)
    real = w.inotify.add_watch

    def limited(path: str, mask: int) -> int:
        if path.endswith("/a"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mask)

    monkeypatch.setattr(w.inotify, "add_watch", limited)
    try:
        assert sorted(w.watch_subtree("/")) == ["/", "/a", "/a/b"]
        assert w.watches_exhausted
    finally:
        w.close()
