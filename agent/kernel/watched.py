"""What the kernel watch follows per cgroup, and the interfaces of those who listen to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.model.snapshot import WorkloadIdentity
from collectors.samples import CgroupSample


class TreeListener(Protocol):
    def __call__(self, created: Sequence[str], deleted: Sequence[str], overflow: bool) -> None:
        """Directories made and removed in the reference tree (paths "/..."), after each
        batch of notifications; overflow: events were lost, rescan everything."""


class WatchListener(Protocol):
    def on_populated(self, cg: WatchedCgroup) -> None:
        """The cgroup has tasks now (a start). Its emptying goes to the watcher's on_emptied,
        in the watch thread, for the final read: the loop is not woken for it."""
    def on_frozen(self, cg: WatchedCgroup, frozen: bool) -> None: ...
    def on_counter(self, cg: WatchedCgroup, source: str, key: str, delta: int, total: int) -> None:
        ...
    def on_pressure(self, cg: WatchedCgroup, res: str, text: str) -> None: ...
    def on_gone(self, cg: WatchedCgroup) -> None: ...
    def on_unseen(self, path: str) -> None:
        """A cgroup was made and removed before the watch got to it: only its path is known."""


@dataclass(frozen=True, slots=True)
class PsiTrigger:
    stall_us: int
    window_us: int
    resources: tuple[str, ...] = ("cpu", "memory", "io")


@dataclass(eq=False)
class WatchedCgroup:
    """One cgroup incarnation the watcher follows."""

    path: str
    inode: int
    identity: WorkloadIdentity
    #: Created while the agent watched: counters start from 0, not from the first read.
    new: bool
    populated: bool | None = None
    #: Ever seen populated since watched (a 50 ms life can coalesce into one `populated 0`).
    seen_populated: bool = False
    frozen: bool | None = None
    #: v1 controllers whose directory of this cgroup was found.
    v1_ctrls: set[str] = field(default_factory=set)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Source -> absolute path (a str: a Path is several times its size, kept per cgroup).
    files: dict[str, str] = field(default_factory=dict)
    #: File name -> source for files whose notices come through the directory's own watch.
    names: dict[str, str] = field(default_factory=dict)
    #: Kept open from the start: cgroup.events (re-read on each notice) and cpu.stat (read the
    #: moment it empties), so neither needs a path lookup, which waits behind churn.
    fds: dict[str, int] = field(default_factory=dict)
    #: CPU read from the kept fd at the last `populated 0`, before anything else.
    at_empty: CgroupSample | None = None
    polled: set[str] = field(default_factory=set)
    wds: dict[int, str] = field(default_factory=dict)
    psi: dict[int, str] = field(default_factory=dict)
    oom_fds: tuple[int, int] | None = None
    v1_tries: int = 0
    v1_pending: bool = False
    #: Has (or had) child cgroups: its `populated` then mirrors theirs.
    has_children: bool = False
    #: monotonic_ns when the last notification for it was taken off the inotify fd.
    notified_ns: int = 0
    #: Watched without some of its fds (kept files, PSI triggers, OOM eventfd): none left.
    short: bool = False


class NoListener:
    """Until a component listens (the events component), per-cgroup changes go nowhere."""

    def on_populated(self, cg: WatchedCgroup) -> None: ...
    def on_frozen(self, cg: WatchedCgroup, frozen: bool) -> None: ...
    def on_counter(self, cg: WatchedCgroup, source: str, key: str, delta: int, total: int) -> None:
        ...
    def on_pressure(self, cg: WatchedCgroup, res: str, text: str) -> None: ...
    def on_gone(self, cg: WatchedCgroup) -> None: ...
    def on_unseen(self, path: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PollScope:
    """Cgroups under a pids limit (own or an ancestor's), and under a memory limit: only there
    can v1 pids.events, memory.failcnt and oom_control move, so only those are polled (all of
    them: ~180 ms of CPU per poll at 1,000 cgroups). None: not known yet, poll everything."""

    pids: frozenset[str] | None = None
    memory: frozenset[str] | None = None

    def covers(self, path: str, source: str) -> bool:
        if source == "pids.events":
            return self.pids is None or path in self.pids
        if source in ("memory.failcnt", "memory.oom_control"):
            return self.memory is None or path in self.memory
        return True
