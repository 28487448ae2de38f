"""Walking a cgroup hierarchy: every directory with its inode, and the processes of one.

The walk uses readdir only (os.scandir): on cgroupfs (kernfs) the d_ino of a directory entry is
the inode stat() reports, so no per-directory stat is needed. Directories vanish while a walk
runs (containers stop); such a directory is skipped, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CgroupDir:
    #: "/"-rooted path relative to the hierarchy root ("/" is the root itself).
    path: str
    #: Directory inode: a cgroup removed and recreated at the same path gets a new one.
    inode: int


def walk(root: Path) -> list[CgroupDir]:
    """Every cgroup directory below `root`, root ("/") first, parents before children."""
    root_s = str(root)
    try:
        out = [CgroupDir("/", os.stat(root_s).st_ino)]
    except OSError:
        return []
    stack: list[tuple[str, str]] = [(root_s, "")]
    while stack:
        abs_dir, rel = stack.pop()
        children: list[tuple[str, str]] = []
        try:
            with os.scandir(abs_dir) as it:
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        child_rel = f"{rel}/{entry.name}"
                        out.append(CgroupDir(child_rel, entry.inode()))
                    except OSError:
                        continue
                    children.append((entry.path, child_rel))
        except OSError:
            continue  # vanished mid-walk (ENOENT/ENODEV), or unreadable: skip its subtree
        # Reverse so the stack pops children in readdir order (stable, parents first).
        stack.extend(reversed(children))
    return out


def cgroup_path(root: str | Path, path: str) -> str:
    """Absolute directory of a "/"-rooted cgroup path within the hierarchy at `root`, as a
    plain string: pathlib interns every part of every path it parses (under churn, every
    new cgroup's name), so per-cgroup work stays off it."""
    rel = path.strip("/")
    return f"{root}/{rel}" if rel else str(root)


def cgroup_dir(root: Path, path: str) -> Path:
    """cgroup_path as a Path."""
    return Path(cgroup_path(root, path))


def inode_of(root: Path, path: str) -> int | None:
    """Directory inode of one cgroup, None if it does not exist (any more)."""
    try:
        return os.stat(cgroup_path(root, path)).st_ino
    except OSError:
        return None


def read_procs(root: Path, path: str) -> tuple[int, ...]:
    """PIDs in cgroup.procs of one cgroup; () if the cgroup vanished or has no such file."""
    try:
        with open(f"{cgroup_path(root, path)}/cgroup.procs", "rb") as f:
            data = f.read()
    except OSError:
        # ENOENT/ENODEV: the cgroup vanished; EOPNOTSUPP: a threaded cgroup. Either way: none.
        return ()
    return tuple(int(x) for x in data.split() if x.isdigit())
