"""What the tasks of a cgroup are doing, from /proc, for reports of a freeze that timed out.

Only /proc/<pid>/task/<tid>/{stat,wchan} are read: they do not take the task's mmap lock
(cmdline and environ do, and can block on exactly the tasks that are stuck).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.control.errors import ControlError
from agent.core.exit_codes import ExitCode

#: Where a task parked by each freezer shows as sleeping. cgroup2: the freezer trap in the
#: signal path (S, wchan do_freezer_trap or get_signal where inlined). v1: tasks that ran into
#: the refrigerator show __refrigerator, but sleepers frozen in place keep their old wchan and
#: read D, like a truly stuck task: for v1 the report errs on the side of listing too many.
FROZEN_WCHAN = {"v2": ("do_freezer_trap", "get_signal"), "v1": ("__refrigerator",)}


@dataclass(frozen=True, slots=True)
class TaskInfo:
    pid: int
    tid: int
    comm: str
    #: One-letter state from /proc (R, S, D, T, t, Z, ...).
    state: str
    wchan: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _task(pid: int, tid: int, proc: Path) -> TaskInfo | None:
    base = proc / str(pid) / "task" / str(tid)
    try:
        raw = (base / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself contain ") "; the state follows the last ")".
    lpar, rpar = raw.find("("), raw.rfind(")")
    comm = raw[lpar + 1 : rpar]
    state = raw[rpar + 2 : rpar + 3]
    wchan = ""
    with contextlib.suppress(OSError):
        wchan = (base / "wchan").read_text().strip()
    return TaskInfo(pid=pid, tid=tid, comm=comm, state=state, wchan=wchan or "0")


def tasks_of(pids: Iterable[int], proc: Path = Path("/proc")) -> list[TaskInfo]:
    out: list[TaskInfo] = []
    for pid in sorted(set(pids)):
        try:
            entries = (proc / str(pid) / "task").iterdir()
            tids = sorted(int(t.name) for t in entries if t.name.isdigit())
        except OSError:
            continue
        for tid in tids:
            info = _task(pid, tid, proc)
            if info is not None:
                out.append(info)
    return out


def unfrozen(tasks: Iterable[TaskInfo], freezer: str) -> list[TaskInfo]:
    """Tasks not parked by `freezer` ("v1"/"v2"); stopped and traced tasks count as frozen."""
    parked = FROZEN_WCHAN[freezer]
    return [t for t in tasks if t.wchan not in parked and t.state not in ("T", "t", "Z", "X")]


def freeze_timeout(what: str, stuck: list[TaskInfo], duration_s: float) -> ControlError:
    """The error of a freeze that timed out and was rolled back, naming the stuck tasks."""
    listed = ", ".join(f"{t.tid} {t.comm} {t.state} {t.wchan}" for t in stuck[:8])
    return ControlError(
        f"{what}; {len(stuck)} task(s) did not freeze: {listed}",
        ExitCode.TIMED_OUT,
        {"stuck": [t.as_dict() for t in stuck], "duration_s": duration_s},
    )
