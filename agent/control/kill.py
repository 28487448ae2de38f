"""Kill every process of a cgroup: `cgroup.kill` where the kernel has it, else SIGKILL.

cgroup.kill is atomic against forks and migration. The fallback signals each listed process
through a pidfd taken while the pid is still listed in the cgroup (so a recycled pid is never
hit), thaws the freezers (a task frozen by the v1 freezer does not die until thawed), and
repeats until every hierarchy's subtree is empty or the deadline passes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent.control import freeze_v2
from agent.control.errors import ControlError
from agent.control.freeze_v2 import DEFAULT_TIMEOUT_S, Progress, no_progress
from agent.control.targets import Target, read_pids, subtree_pids
from agent.core.exit_codes import ExitCode


@dataclass(frozen=True, slots=True)
class KillResult:
    method: str
    #: Processes present when the kill started.
    pids: tuple[int, ...]
    duration_s: float


def all_pids(target: Target) -> set[int]:
    pids: set[int] = set()
    for d in target.dirs():
        pids.update(subtree_pids(d))
    return pids


def _signal_listed(d: Path) -> int:
    """SIGKILL every process listed in `d`'s subtree; returns how many were signalled."""
    sent = 0
    for pid, sub in subtree_pids(d).items():
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            # Still listed after the pidfd was taken: the pidfd names this cgroup's process.
            if pid in read_pids(d / sub.lstrip("/") if sub else d):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                sent += 1
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
    return sent


def _thaw_all(target: Target) -> None:
    for d in target.dirs():
        for sub, _dirs, files in os.walk(d):
            if "freezer.state" in files:
                with contextlib.suppress(OSError):
                    Path(sub, "freezer.state").write_text("THAWED")


def kill(
    target: Target,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Progress = no_progress,
    method: str = "auto",
) -> KillResult:
    """Kill the target's processes in every hierarchy; ControlError(TIMED_OUT) if some stay."""
    start = time.monotonic()
    deadline = start + timeout
    before = tuple(sorted(all_pids(target)))
    used = "signal"
    unified = target.unified
    if method in ("auto", "cgroup.kill") and unified is not None and (
        unified / "cgroup.kill"
    ).exists():
        used = "cgroup.kill"
        fd = freeze_v2.open_events(unified)
        try:
            progress(f"writing 1 to {unified}/cgroup.kill")
            try:
                (unified / "cgroup.kill").write_text("1")
            except OSError as e:
                raise ControlError(f"cannot write {unified}/cgroup.kill: {e.strerror}") from None
            _thaw_all(target)
            try:
                freeze_v2.wait_event(fd, False, deadline, key="populated")
            except OSError as e:
                # ENODEV: the emptied cgroup is already removed (systemd removes a unit's
                # cgroup as soon as its last process is gone): the kill is done.
                if e.errno != errno.ENODEV:
                    raise
        finally:
            os.close(fd)
    elif method == "cgroup.kill":
        raise ControlError(f"{target.cgroup}: no cgroup.kill on this kernel", ExitCode.USAGE)
    # The fallback, and the sweep of v1 hierarchies cgroup.kill does not cover.
    while True:
        remaining = all_pids(target)
        if not remaining:
            break
        if time.monotonic() >= deadline:
            raise ControlError(
                f"{target.cgroup}: {len(remaining)} process(es) still present after "
                f"{timeout:g} s: {sorted(remaining)[:10]}",
                ExitCode.TIMED_OUT,
                {"remaining": sorted(remaining), "duration_s": time.monotonic() - start},
            )
        if used == "signal":
            progress(f"sending SIGKILL to {len(remaining)} process(es)")
        for d in target.dirs():
            _signal_listed(d)
        _thaw_all(target)
        time.sleep(0.01)
    return KillResult(used, before, time.monotonic() - start)
