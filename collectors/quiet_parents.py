"""Skipping a child's CPU and PSI files while its parent's did not move.

cpu.stat usage and the PSI stall totals are hierarchical: a task of a child that runs or stalls
moves its parent's usage, or its parent's `some` total, over the same moments. So while a
parent's usage and PSI totals read the same, no descendant's moved either, and a child whose last
read of those files falls inside that stretch still has the values it read then, as of the
parent's latest read. Counters and stall totals stay exact; they are only reported as of the
parent's read, earlier in the same pass (the pass reads a parent before its children).

What is monotonic makes the stretch exact: two reads of a parent giving the same values v mean
the value was v from the end of the first read to the start of the second. A child is skipped
only when its own files cannot move without it (no PSI average left to decay, no CFS quota whose
period timer counts on after the last run), and never for the read that follows a change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Hierarchical files: a child's cannot move while its parent's stay the same.
HIER_FILES = frozenset({"cpu.stat", "cpu.pressure", "memory.pressure", "io.pressure"})
_TOTAL = re.compile(rb"total=(\d+)")
_AVGS_ZERO = b"avg10=0.00 avg60=0.00 avg300=0.00"


@dataclass(slots=True)
class _Stretch:
    inode: int
    data: tuple[bytes | None, ...]
    #: The values held from `since` through `through` (-1: not known for two reads yet).
    since: int
    through: int
    #: The last read of them (or the moment they were known at, when skipped).
    start: int
    end: int
    #: Its own files may be skipped (nothing in them moves by itself).
    skippable: bool


def _totals(data: tuple[bytes | None, ...]) -> list[list[bytes] | bytes | None]:
    """cpu.stat as it is, PSI files by their totals (their averages decay by themselves)."""
    return [d if i == 0 or d is None else _TOTAL.findall(d) for i, d in enumerate(data)]


def self_still(data: tuple[bytes | None, ...], quota_unlimited: bool) -> bool:
    """Nothing in these files moves without a task of the cgroup: no PSI average left to
    decay (data[1:]) and no CFS quota (its period timer runs on after the last run)."""
    if not quota_unlimited:
        return False
    return all(d is None or d.count(_AVGS_ZERO) == d.count(b"\n") for d in data[1:])


class QuietParents:
    """The stretches in which each cgroup's hierarchical files held (reader-owned, locked)."""

    def __init__(self) -> None:
        self._by_path: dict[str, _Stretch] = {}

    def __len__(self) -> int:
        return len(self._by_path)

    def read(self, path: str, inode: int, data: tuple[bytes | None, ...], start: int,
             end: int, skippable: bool) -> None:
        """The files were read between `start` and `end` (monotonic ns)."""
        s = self._by_path.get(path)
        if s is not None and s.inode == inode and (
                s.data == data or _totals(s.data) == _totals(data)):
            s.through = start
            s.start, s.end, s.data, s.skippable = start, end, data, skippable
        else:
            self._by_path[path] = _Stretch(inode, data, end, -1, start, end, skippable)

    def unchanged_through(self, path: str, inode: int) -> int | None:
        """The moment through which the cgroup's files are known unchanged since its last
        read of them, from its parent's stretch; None when they must be read."""
        s = self._by_path.get(path)
        if s is None or s.inode != inode or not s.skippable or path == "/":
            return None
        p = self._by_path.get(path.rsplit("/", 1)[0] or "/")
        # The parent read again since this one's last read (else nothing new is known: a parent
        # no longer read must not vouch for ever), and its stretch covers that last read.
        if p is None or p.since > s.start or p.through <= s.end:
            return None
        return p.through

    def skipped(self, path: str, through: int) -> None:
        """Not read: known unchanged through `through` (its own stretch goes on to there)."""
        s = self._by_path[path]
        s.through = s.start = s.end = through

    def forget(self, path: str) -> None:
        self._by_path.pop(path, None)
