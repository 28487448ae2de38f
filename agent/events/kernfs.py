"""Small kernfs helpers of the watcher: reading, parsing, v1 paths, the v1 OOM eventfd."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("agent.events.watcher")

#: errno values that mean "the cgroup (or the process) is gone".
GONE = (errno.ENOENT, errno.ENODEV, errno.ENOTDIR, errno.ESRCH)


def parse_flat(text: str) -> dict[str, int]:
    """Flat keyed `KEY VALUE` lines (a bare number is key ``value``); junk lines skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        try:
            if len(parts) == 1:
                out["value"] = int(parts[0])
            elif len(parts) == 2:
                out[parts[0]] = int(parts[1])
        except ValueError:
            continue
    return out


def read_text(path: Path) -> str | None:
    """File text, or None when the cgroup (or the file) is gone."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        if e.errno in GONE:
            return None
        raise


def member_v1_dir(root: Path, ref_dir: Path, ctrl: str) -> Path | None:
    """A cgroup's directory in the v1 hierarchy at `root`, from a member's /proc/PID/cgroup.

    The hierarchies can differ (here memory sits under /process_api/<id>). A runtime moves a
    new process into one hierarchy after the other, so a member is trusted only once it names
    a directory ending like ours.
    """
    procs = read_text(ref_dir / "cgroup.procs")
    for pid in (procs or "").split()[:3]:
        text = read_text(Path(f"/proc/{pid}/cgroup")) or ""
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and ctrl in parts[1].split(",") and (
                parts[2].rsplit("/", 1)[-1] == ref_dir.name
            ):
                return root / parts[2].lstrip("/")
    return None


def oom_eventfd(control: Path) -> tuple[int, int] | None:
    """(eventfd, memory.oom_control fd) registered through cgroup.event_control (v1)."""
    try:
        cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with open(control.parent / "cgroup.event_control", "w") as f:
            f.write(f"{efd} {cfd}")
    except OSError as e:
        os.close(efd)
        os.close(cfd)
        log.debug("oom eventfd on %s: %s", control, e)
        return None
    return efd, cfd
