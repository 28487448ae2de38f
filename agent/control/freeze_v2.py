"""The cgroup2 freezer: `cgroup.freeze` requests, `frozen` in `cgroup.events` confirms.

Completion is awaited through the file's change notification: kernfs wakes poll waiters with
POLLPRI|POLLERR when the file changed since our last read, but reports it readable (POLLIN)
always, so a dedicated epoll watches EPOLLPRI only, and every wake-up is followed by
lseek(0)+read, which both gives the current values and re-arms the notification.
Notifications coalesce (at most ~100/s per file): values are re-read, never counted.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.control.errors import ControlError
from agent.control.targets import subtree_pids, write_knob
from agent.control.tasks import TaskInfo, freeze_timeout, tasks_of, unfrozen
from agent.core.exit_codes import ExitCode
from collectors.parsers import parse_events

Progress = Callable[[str], None]
DEFAULT_TIMEOUT_S = 10.0


def no_progress(_msg: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class FreezeResult:
    freezer: str
    #: Effective state after the operation.
    frozen: bool
    duration_s: float
    #: Already in the requested state before we wrote anything.
    unchanged: bool = False
    #: Set when thawing could not take effect because an ancestor holds the freeze.
    held_by: str | None = None
    stuck: tuple[TaskInfo, ...] = field(default=())


def _events(data: bytes) -> dict[str, bool | None]:
    populated, frozen = parse_events(data)
    return {"populated": populated, "frozen": frozen}


def read_events(d: Path) -> dict[str, bool | None]:
    return _events((d / "cgroup.events").read_bytes())


def _read_fd(fd: int) -> dict[str, bool | None]:
    os.lseek(fd, 0, os.SEEK_SET)
    return _events(os.read(fd, 4096))


def requested(d: Path) -> bool:
    try:
        return (d / "cgroup.freeze").read_text().strip() == "1"
    except FileNotFoundError:
        return False


def frozen_ancestor(d: Path, root: Path) -> Path | None:
    """The nearest ancestor (below `root`) whose own cgroup.freeze is 1."""
    cur = d.parent
    while cur != root and root in cur.parents:
        if requested(cur):
            return cur
        cur = cur.parent
    return None


def state(d: Path, root: Path) -> dict[str, object]:
    """Requested vs effective state; `frozen` includes a freeze applied by an ancestor."""
    events = read_events(d) if (d / "cgroup.events").exists() else {}
    anc = frozen_ancestor(d, root)
    return {
        "requested": requested(d),
        "frozen": bool(events.get("frozen")),
        "populated": bool(events.get("populated")),
        "frozen_by_ancestor": str(anc) if anc is not None else None,
    }


def _write(d: Path, value: str) -> None:
    write_knob(d, "cgroup.freeze", value, "root or no cgroup2 freezer")


def wait_event(fd: int, want: bool, deadline: float, key: str = "frozen") -> bool:
    """Wait until `key` in cgroup.events equals `want` or the deadline passes (in epoll)."""
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLPRI)
        while True:
            if _read_fd(fd).get(key) == want:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ep.poll(remaining)
    finally:
        ep.close()


def open_events(d: Path) -> int:
    try:
        return os.open(d / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ControlError(f"no such cgroup2 directory: {d}", ExitCode.NOT_FOUND) from None


def freeze(
    d: Path, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = no_progress
) -> FreezeResult:
    """Freeze `d`; on timeout write 0 back and raise ControlError(TIMED_OUT) with stuck tasks."""
    start = time.monotonic()
    fd = open_events(d)
    try:
        was = _read_fd(fd)  # also arms the notification before the write
        if was.get("frozen") and requested(d):
            return FreezeResult("v2", True, time.monotonic() - start, unchanged=True)
        progress(f"writing 1 to {d}/cgroup.freeze")
        _write(d, "1")
        progress(f"waiting for 'frozen 1' in cgroup.events (timeout {timeout:g} s)")
        if wait_event(fd, True, start + timeout):
            return FreezeResult("v2", True, time.monotonic() - start)
        # Capture who is not parked before the rollback wakes everybody.
        stuck = unfrozen(tasks_of(subtree_pids(d)), "v2")
        _write(d, "0")
        progress("timed out: wrote 0 back to cgroup.freeze")
        wait_event(fd, False, time.monotonic() + max(timeout, 1.0))
    finally:
        os.close(fd)
    raise freeze_timeout(
        f"{d.name}: not frozen after {timeout:g} s; rolled back (cgroup.freeze=0)",
        stuck, time.monotonic() - start,
    )


def thaw(
    d: Path, root: Path, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = no_progress
) -> FreezeResult:
    """Thaw `d`; when an ancestor still holds the freeze, say which instead of waiting."""
    start = time.monotonic()
    fd = open_events(d)
    try:
        _read_fd(fd)
        if not requested(d) and _read_fd(fd).get("frozen") is False:
            return FreezeResult("v2", False, time.monotonic() - start, unchanged=True)
        progress(f"writing 0 to {d}/cgroup.freeze")
        _write(d, "0")
        anc = frozen_ancestor(d, root)
        if anc is not None:
            return FreezeResult("v2", True, time.monotonic() - start, held_by=str(anc))
        if wait_event(fd, False, start + timeout):
            return FreezeResult("v2", False, time.monotonic() - start)
    finally:
        os.close(fd)
    raise ControlError(
        f"{d.name}: still frozen {timeout:g} s after writing 0", ExitCode.TIMED_OUT,
        {"duration_s": time.monotonic() - start},
    )
