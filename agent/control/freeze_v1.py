"""The v1 freezer: `freezer.state` FROZEN/THAWED, retried while FREEZING.

freezer.state has no change notification, so completion is polled at a short interval and
FROZEN is written again while the state reads FREEZING: a v1 freeze can miss tasks that were
forking during the first pass (runc does the same). On timeout THAWED is written back.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.control.errors import ControlError
from agent.control.freeze_v2 import DEFAULT_TIMEOUT_S, FreezeResult, Progress, no_progress
from agent.control.targets import subtree_pids, write_knob
from agent.control.tasks import freeze_timeout, tasks_of, unfrozen
from agent.core.exit_codes import ExitCode

_POLL_S = 0.01
_REWRITE_S = 0.1


def read_state(d: Path) -> str:
    try:
        return (d / "freezer.state").read_text().strip()
    except FileNotFoundError:
        raise ControlError(f"{d} has no freezer.state (root or no v1 freezer)") from None


def _flag(d: Path, name: str) -> bool:
    try:
        return (d / name).read_text().strip() == "1"
    except OSError:
        return False


def state(d: Path) -> dict[str, object]:
    """freezer.state is the effective state (FROZEN when a parent froze it too)."""
    value = read_state(d)
    return {
        "state": value,
        "frozen": value == "FROZEN",
        "self_freezing": _flag(d, "freezer.self_freezing"),
        "parent_freezing": _flag(d, "freezer.parent_freezing"),
    }


def _write(d: Path, value: str) -> None:
    write_knob(d, "freezer.state", value, "root or no v1 freezer")


def _wait_for(d: Path, want: str, deadline: float, rewrite: bool) -> bool:
    last_write = time.monotonic()
    while True:
        current = read_state(d)
        if current == want:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if rewrite and now - last_write >= _REWRITE_S:
            _write(d, want)
            last_write = now
        time.sleep(min(_POLL_S, max(deadline - now, 0.0)))


def freeze(
    d: Path, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = no_progress
) -> FreezeResult:
    start = time.monotonic()
    if read_state(d) == "FROZEN" and _flag(d, "freezer.self_freezing"):
        return FreezeResult("v1", True, time.monotonic() - start, unchanged=True)
    progress(f"writing FROZEN to {d}/freezer.state")
    _write(d, "FROZEN")
    progress(f"waiting for FROZEN (timeout {timeout:g} s)")
    if _wait_for(d, "FROZEN", start + timeout, rewrite=True):
        return FreezeResult("v1", True, time.monotonic() - start)
    stuck = unfrozen(tasks_of(subtree_pids(d)), "v1")
    _write(d, "THAWED")
    progress("timed out: wrote THAWED back to freezer.state")
    _wait_for(d, "THAWED", time.monotonic() + max(timeout, 1.0), rewrite=False)
    raise freeze_timeout(
        f"{d.name}: still FREEZING after {timeout:g} s; rolled back (THAWED)",
        stuck, time.monotonic() - start,
    )


def thaw(
    d: Path, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = no_progress
) -> FreezeResult:
    start = time.monotonic()
    if read_state(d) == "THAWED":
        return FreezeResult("v1", False, time.monotonic() - start, unchanged=True)
    progress(f"writing THAWED to {d}/freezer.state")
    _write(d, "THAWED")
    if _flag(d, "freezer.parent_freezing"):
        return FreezeResult("v1", True, time.monotonic() - start, held_by="parent")
    if _wait_for(d, "THAWED", start + timeout, rewrite=False):
        return FreezeResult("v1", False, time.monotonic() - start)
    raise ControlError(
        f"{d.name}: not THAWED {timeout:g} s after writing it", ExitCode.TIMED_OUT,
        {"duration_s": time.monotonic() - start},
    )
