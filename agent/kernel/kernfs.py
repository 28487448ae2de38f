"""Small kernfs helpers of the watcher: reading, v1 paths, the v1 OOM eventfd (parsing is
collectors.parsers', one parser per kernel file format)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from collectors.cgroup_tree import cgroup_path
from collectors.layout import CgroupLayout
from collectors.parsers import ParseError, parse_flat, parse_proc_cgroup, parse_single

log = logging.getLogger("agent.kernel.watch")

#: errno values that mean "the cgroup (or the process) is gone".
GONE = (errno.ENOENT, errno.ENODEV, errno.ENOTDIR, errno.ESRCH)


def counter_values(source: str, text: str) -> dict[str, int]:
    """The counters of one watched file, through the collectors' parser of its format; {}
    for text that is not the kernel's shape (a torn read)."""
    data = text.encode()
    try:
        if source == "memory.failcnt":
            return {"failcnt": parse_single(data)}
        return parse_flat(data)
    except ParseError:
        return {}


def read_text(path: str | Path) -> str | None:
    """File text, or None when the cgroup (or the file) is gone."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        if e.errno in GONE:
            return None
        raise


def member_v1_dir(root: str, ref_dir: str, ctrl: str) -> str | None:
    """A cgroup's directory in the v1 hierarchy at `root`, from a member's /proc/PID/cgroup.

    The hierarchies can differ (here memory sits under /process_api/<id>). A runtime moves a
    new process into one hierarchy after the other, so a member is trusted only once it names
    a directory ending like ours.
    """
    procs = read_text(f"{ref_dir}/cgroup.procs")
    for pid in (procs or "").split()[:3]:
        try:
            member = parse_proc_cgroup((read_text(f"/proc/{pid}/cgroup") or "").encode())
        except ParseError:
            continue
        at = member.get(ctrl)
        if at is not None and at.rsplit("/", 1)[-1] == ref_dir.rsplit("/", 1)[-1]:
            return cgroup_path(root, at)
    return None


def oom_eventfd(control: str) -> tuple[int, int] | None:
    """(eventfd, memory.oom_control fd) registered through cgroup.event_control (v1); None
    when that fails, OSError when out of fds (EMFILE, ENFILE)."""
    try:
        cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise
        return None
    try:
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except OSError:
        os.close(cfd)
        raise
    try:
        with open(f"{os.path.dirname(control)}/cgroup.event_control", "w") as f:
            f.write(f"{efd} {cfd}")
    except OSError as e:
        os.close(efd)
        os.close(cfd)
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise
        log.debug("oom eventfd on %s: %s", control, e)
        return None
    return efd, cfd


def has_subdir(d: str) -> bool:
    try:
        with os.scandir(d) as it:
            return any(e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def v1_dir(layout: CgroupLayout, path: str, ctrl: str, given: str | None) -> str | None:
    """The directory of cgroup `path` (of the reference tree) in the v1 `ctrl` hierarchy."""
    v1_root = layout.v1_root(ctrl)
    assert v1_root is not None
    root, ref = str(v1_root), str(layout.reference_root)
    own = cgroup_path(ref, path)
    if root == ref:
        return own
    if given:
        return cgroup_path(root, given)
    same = cgroup_path(root, path)
    if os.path.isdir(same):
        return same
    return member_v1_dir(root, own, ctrl)
