"""In the final-read process: the kernel watch's inotify fd read for the agent, and each
cgroup's end read the moment it is seen (agent.kernel.final_read_child, forwarding).

A `cgroup.events` notice is read here first. `populated 0`: the final sample is read at once
and goes to the agent with the bytes of the read that brought the notice (the agent's watch
handles them as its own and takes the read when it asks for it). `populated 1`: the cgroup is
young, and its `cgroup.events` is polled every 2 ms for 250 ms through an fd kept for that
while: the kernel sends at most one notice per 10 ms per file, so the end of a life of a few
ms would otherwise be told late. An end found by the poll goes to the agent as a notice made
here (IN_MODIFY of `cgroup.events` on the cgroup's directory watch), with its read.

A new directory (IN_CREATE on a watched one) is looked at here at once, before the agent has
watched it: a life that already ended (empty, CPU used) is read now, and one not started or
running is young. Without this, a life that ended before the agent's first look was read
when the agent asked, at its normal priority: p99 22-28 ms at 1,000 cgroups. The agent takes
such a read when its own look finds the cgroup empty (FinalReadProcess.submit checks it is
this life's).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from agent.kernel.final_read_wire import EarlyRead, encode_forward
from collectors.cgroup_dir import flat, read_file
from collectors.cgroup_tree import cgroup_path
from collectors.cgroup_v2 import cpu_sample, events
from collectors.cgroupfs import CgroupReader
from collectors.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    raw_events,
)

#: A cgroup that just filled has its cgroup.events re-read this often, for this long (here, or
#: by the agent's watch when it reads its notices itself): the kernel sends at most one notice
#: per 10 ms per file (the rest later, by a timer) and inotify hears of it through a work item,
#: so the end of a life of a few ms is told too late to read it before a prompt rmdir. A pread
#: on a kept fd costs microseconds.
YOUNG_POLL_S, YOUNG_FOR_NS = 0.002, 250_000_000
#: A young cgroup whose directory watch the agent has not told yet (its watch thread is busy)
#: is polled this long: its notices do not reach this process, so the poll is all there is.
#: Bounded all the same: an agent that never tells must not hold MAX_YOUNG fds for good.
UNTOLD_FOR_NS = 5_000_000_000
#: After a batch of final reads, a short sleep, then each read's CPU counter is checked: at
#: `populated 0` the exiting task is still running its exit, and the CPU it used since its
#: last tick is charged at its final context switch (on this process's CPU, at real-time
#: priority, only once this process sleeps). A counter that moved is read again, whole.
SETTLE_S, SETTLE_ROUNDS = 0.0001, 3
#: At most this many young cgroups (an fd each): past it, a burst of new ones (a rescan, a
#: node's pods starting) is left to the kernel's notices and the agent's look.
MAX_YOUNG = 512
_EVENTS = b"cgroup.events"
#: An inotify event with the name `cgroup.events` (NUL-padded to 16 bytes, as the kernel pads).
_NOTICE = struct.Struct("iIII16s")


class Young:
    """A cgroup that just filled (or was just made): its cgroup.events fd, kept until it
    empties or the time ends (counted from its fill, its making or the agent's tell: see
    UNTOLD_FOR_NS). `filled`: seen populated (a new one may not be yet)."""

    __slots__ = ("fd", "filled", "until_ns")

    def __init__(self, fd: int, until_ns: int, filled: bool) -> None:
        self.fd, self.until_ns, self.filled = fd, until_ns, filled


class Forwarding:
    """Reads the agent's inotify fd: final reads at `populated 0`, then the bytes to the agent."""

    def __init__(self, reader: CgroupReader, unified: Path, fd: int,
                 send: Callable[[bytes], None]) -> None:
        self.reader = reader
        self.root = str(unified)
        self.fd = fd
        self._send = send
        #: The cgroup (path below the cgroup2 root) of each directory watch, as the agent told,
        #: and the other way round (a notice made here names the directory's watch).
        self.dirs: dict[int, str] = {}
        self.wds: dict[str, int] = {}
        #: Young cgroups by path.
        self.young: dict[str, Young] = {}
        #: Cgroups last seen empty, their end read (the read, once done): the kernel's notice
        #: of an end the poll found reads nothing new (the agent asks in the rare case of a
        #: whole life between two of its notices), and the agent's request is answered with it.
        self.ended: dict[str, EarlyRead | None] = {}
        self._next_poll = 0.0
        #: While the agent tells the whole map again: the paths told so far.
        self._retold: set[str] | None = None

    def tell(self, wd: int, path: str) -> None:
        """The agent added a directory watch."""
        self.dirs[wd] = path
        self.wds[path] = wd
        if self._retold is not None:
            self._retold.add(path)
        if (young := self.young.get(path)) is not None:  # its notices come from now on
            young.until_ns = self._young_until(path)

    def begin_reset(self) -> None:
        """The agent tells its whole map again (after a queue overflow)."""
        self._retold = set()

    def end_reset(self) -> None:
        """The map is told again: a directory it no longer names went while notices were
        lost (its IN_IGNORED with them): nothing of it is kept. A young cgroup not told yet
        stays (the agent's rescan may not have reached it; UNTOLD_FOR_NS bounds it)."""
        retold, self._retold = self._retold or set(), None
        for path in [p for p in self.wds if p not in retold]:
            self._forget(path)
        for wd in [wd for wd, p in self.dirs.items() if self.wds.get(p) != wd]:
            del self.dirs[wd]

    def poll_s(self) -> float:
        """epoll's timeout: -1 (none) unless a young cgroup is polled."""
        if not self.young:
            return -1
        return max(0.0, self._next_poll - time.monotonic())

    def forward(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        notified_ns = time.monotonic_ns()
        noticed: dict[int, None] = {}
        made: dict[str, None] = {}
        for wd, mask, _cookie, name in raw_events(data):
            if mask & IN_MODIFY and name == _EVENTS:
                noticed[wd] = None
            elif mask & IN_ISDIR and name and (parent := self.dirs.get(wd)) is not None:
                child = f"{parent.rstrip('/')}/{name.decode(errors='surrogateescape')}"
                if mask & (IN_CREATE | IN_MOVED_TO):
                    made[child] = None
                elif mask & (IN_DELETE | IN_MOVED_FROM):
                    made.pop(child, None)
                    self._forget(child)
            elif mask & IN_IGNORED and (path := self.dirs.pop(wd, None)) is not None \
                    and self.wds.get(path) == wd:
                self._forget(path)
        early: dict[str, EarlyRead] = {}
        for wd in noticed:
            path = self.dirs.get(wd)
            if path is None:
                continue  # not told yet: the agent asks for the read
            populated = self._populated(path)
            if populated is False and path not in self.ended:
                self._read_end(path, notified_ns, early)
            elif populated:
                self.ended.pop(path, None)
                young = self.young.get(path)
                if young is None:
                    self._make_young(path, filled=True)
                elif not young.filled:
                    self._filled(path, young)
        for path in made:
            self._look(path, early)
        self._settle(early)
        self._send(encode_forward(data, early))

    def poll_young(self) -> None:
        """Every YOUNG_POLL_S while some cgroup is young: ends found go to the agent."""
        if not self.young or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + YOUNG_POLL_S
        now = time.monotonic_ns()
        notices: list[bytes] = []
        early: dict[str, EarlyRead] = {}
        for path, young in list(self.young.items()):
            try:
                populated = events(os.pread(young.fd, 512, 0))[0]
            except OSError:
                populated = None  # removed: the agent's kept fds and rmdir probe tell it
            if populated is False and young.filled:
                self._read_end(path, time.monotonic_ns(), early)
                wd = self.wds.get(path)
                if wd is not None:  # else the agent has not looked yet: its look asks
                    notices.append(_NOTICE.pack(wd, IN_MODIFY, 0, 16, _EVENTS))
            elif populated is None or now > young.until_ns:
                self._forget_young(path)
            elif populated:
                if not young.filled:
                    self._filled(path, young)
                self.ended.pop(path, None)
        self._settle(early)
        if notices or early:
            self._send(encode_forward(b"".join(notices), early))

    def _look(self, path: str, early: dict[str, EarlyRead]) -> None:
        """A directory just made: a life already over is read now; else it is young."""
        if path in self.young or len(self.young) >= MAX_YOUNG:
            return
        try:
            fd = os.open(f"{cgroup_path(self.root, path)}/cgroup.events",
                         os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # removed already, or not a cgroup: the agent's look tells
        try:
            looked_ns = time.monotonic_ns()
            populated = events(os.pread(fd, 512, 0))[0]
        except OSError:
            populated = None
        if populated is None or (populated is False and self._usage(path)):
            os.close(fd)
            if populated is False:  # a whole life before this look
                self._read_end(path, looked_ns, early)
            return
        self._keep_young(path, fd, filled=populated)

    def _read_end(self, path: str, notified_ns: int, early: dict[str, EarlyRead]) -> None:
        """The cgroup was seen empty: no longer young, its end read (kept in `ended`)."""
        self._forget_young(path)
        self.ended[path] = None
        self._read(path, notified_ns, early)

    def _usage(self, path: str) -> int | None:
        """The CPU counter (cpu.stat usage_usec) now; None when it cannot be read."""
        cpu = cpu_sample(flat(read_file(f"{cgroup_path(self.root, path)}/cpu.stat")))
        return cpu.usage_usec if cpu is not None else None

    def _read(self, path: str, notified_ns: int, early: dict[str, EarlyRead]) -> None:
        try:
            sample = self.reader.read(path, member_pid=None)
        except Exception:  # the agent asks for the read again, and logs what fails
            return
        finally:
            self.reader.release(path)
        early[path] = read = (notified_ns, time.monotonic_ns(), sample)
        if path in self.ended:
            self.ended[path] = read

    def done_read(self, path: str) -> EarlyRead | None:
        """The read of this cgroup's end done here, if no task ran since (the same inode, the
        same CPU counter): the agent asks for it when its look or notice came before the read
        reached it, or asks again at the kernel's later notice of the same end."""
        read = self.ended.get(path)
        if read is None or read[2].cpu is None or read[2].cpu.usage_usec is None:
            return None
        try:
            inode = os.stat(cgroup_path(self.root, path)).st_ino
        except OSError:
            return None  # removed: the agent's rmdir probe and reader tell the rest
        if inode != read[2].inode or self._usage(path) != read[2].cpu.usage_usec:
            return None
        return read

    def _settle(self, early: dict[str, EarlyRead]) -> None:
        """Reads whose CPU counter moved since are done again (see SETTLE_S)."""
        todo = list(early)
        for _ in range(SETTLE_ROUNDS):
            if not todo:
                return
            time.sleep(SETTLE_S)
            moved = []
            for path in todo:
                notified_ns, _, sample = early[path]
                if sample.cpu is None or sample.cpu.usage_usec is None:
                    continue  # removed during the read: the agent's rmdir probe has the CPU
                now = self._usage(path)
                if now is not None and now != sample.cpu.usage_usec:
                    moved.append(path)
                    self._read(path, notified_ns, early)
            todo = moved

    def _populated(self, path: str) -> bool | None:
        young = self.young.get(path)
        try:
            if young is not None:
                return events(os.pread(young.fd, 512, 0))[0]
            return events(read_file(f"{cgroup_path(self.root, path)}/cgroup.events"))[0]
        except OSError:
            return None  # removed: the agent's kept fds and rmdir probe tell its end

    def _make_young(self, path: str, filled: bool) -> None:
        if len(self.young) >= MAX_YOUNG:
            return
        try:
            fd = os.open(f"{cgroup_path(self.root, path)}/cgroup.events",
                         os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._keep_young(path, fd, filled)

    def _young_until(self, path: str) -> int:
        return time.monotonic_ns() + (YOUNG_FOR_NS if path in self.wds else UNTOLD_FOR_NS)

    def _filled(self, path: str, young: Young) -> None:
        """A young cgroup made empty got its first task: its life is polled from now."""
        young.filled = True
        young.until_ns = self._young_until(path)

    def _keep_young(self, path: str, fd: int, filled: bool) -> None:
        self.young[path] = Young(fd, self._young_until(path), filled)
        if len(self.young) == 1:  # else the next poll is due sooner already
            self._next_poll = time.monotonic() + YOUNG_POLL_S

    def _forget_young(self, path: str) -> None:
        young = self.young.pop(path, None)
        if young is not None:
            os.close(young.fd)

    def _forget(self, path: str) -> None:
        """The directory went: nothing of it is kept."""
        self._forget_young(path)
        self.ended.pop(path, None)
        if (wd := self.wds.pop(path, None)) is not None and self.dirs.get(wd) == path:
            del self.dirs[wd]
