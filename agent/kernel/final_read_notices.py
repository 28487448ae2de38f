"""In the final-read process: the kernel watch's inotify fd read for the agent, and each
cgroup's end read the moment it is seen (agent.kernel.final_read_child, forwarding).

A `cgroup.events` notice is read here first. `populated 0`: the final sample is read at once
and goes to the agent with the bytes of the read that brought the notice (the agent's watch
handles them as its own and takes the read when it asks for it). `populated 1`: the cgroup is
young, and its `cgroup.events` is polled every 2 ms for 250 ms through an fd kept for that
while: the kernel sends at most one notice per 10 ms per file, so the end of a life of a few
ms would otherwise be told late. An end found by the poll goes to the agent as a notice made
here (IN_MODIFY of `cgroup.events` on the cgroup's directory watch), with its read.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from agent.kernel.final_read_wire import EarlyRead, encode_forward
from collectors.cgroup_dir import read_file
from collectors.cgroup_tree import cgroup_path
from collectors.cgroup_v2 import events
from collectors.cgroupfs import CgroupReader
from collectors.inotify import IN_IGNORED, IN_MODIFY, raw_events

#: A cgroup that just filled has its cgroup.events re-read this often, for this long (here, or
#: by the agent's watch when it reads its notices itself): the kernel sends at most one notice
#: per 10 ms per file (the rest later, by a timer) and inotify hears of it through a work item,
#: so the end of a life of a few ms is told too late to read it before a prompt rmdir. A pread
#: on a kept fd costs microseconds.
YOUNG_POLL_S, YOUNG_FOR_NS = 0.002, 250_000_000
_EVENTS = b"cgroup.events"
#: An inotify event with the name `cgroup.events` (NUL-padded to 16 bytes, as the kernel pads).
_NOTICE = struct.Struct("iIII16s")


class Young:
    """A cgroup that just filled: its cgroup.events fd, kept until it empties or the time ends."""

    __slots__ = ("fd", "path", "until_ns")

    def __init__(self, path: str, fd: int, until_ns: int) -> None:
        self.path, self.fd, self.until_ns = path, fd, until_ns


class Forwarding:
    """Reads the agent's inotify fd: final reads at `populated 0`, then the bytes to the agent."""

    def __init__(self, reader: CgroupReader, unified: Path, fd: int,
                 send: Callable[[bytes], None]) -> None:
        self.reader = reader
        self.root = str(unified)
        self.fd = fd
        self._send = send
        #: The cgroup (path below the cgroup2 root) of each directory watch, as the agent told.
        self.dirs: dict[int, str] = {}
        #: Young cgroups by directory watch.
        self.young: dict[int, Young] = {}
        #: Directory watches whose cgroup was last seen empty, its end read: the kernel's
        #: notice of an end the poll found reads nothing new (the agent asks in the rare case
        #: of a whole life between two of its notices).
        self.ended: set[int] = set()
        self._next_poll = 0.0

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
        for wd, mask, _cookie, name in raw_events(data):
            if mask & IN_MODIFY and name == _EVENTS:
                noticed[wd] = None
            elif mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                self.ended.discard(wd)
                self._forget_young(wd)
        early: dict[str, EarlyRead] = {}
        for wd in noticed:
            path = self.dirs.get(wd)
            if path is None:
                continue  # not told yet: the agent asks for the read
            populated = self._populated(wd, path)
            if populated is False and wd not in self.ended:
                self._forget_young(wd)
                self.ended.add(wd)
                self._read(path, notified_ns, early)
            elif populated:
                self.ended.discard(wd)
                if wd not in self.young:
                    self._make_young(wd, path)
        self._send(encode_forward(data, early))

    def poll_young(self) -> None:
        """Every YOUNG_POLL_S while some cgroup is young: ends found go to the agent."""
        if not self.young or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + YOUNG_POLL_S
        now = time.monotonic_ns()
        notices: list[bytes] = []
        early: dict[str, EarlyRead] = {}
        for wd, young in list(self.young.items()):
            try:
                populated = events(os.pread(young.fd, 512, 0))[0]
            except OSError:
                populated = None  # removed: the agent's kept fds and rmdir probe tell it
            if populated is False:
                self._forget_young(wd)
                self.ended.add(wd)
                self._read(young.path, time.monotonic_ns(), early)
                notices.append(_NOTICE.pack(wd, IN_MODIFY, 0, 16, _EVENTS))
            elif populated is None or now > young.until_ns:
                self._forget_young(wd)
        if notices:
            self._send(encode_forward(b"".join(notices), early))

    def _read(self, path: str, notified_ns: int, early: dict[str, EarlyRead]) -> None:
        try:
            sample = self.reader.read(path, member_pid=None)
        except Exception:  # the agent asks for the read again, and logs what fails
            return
        finally:
            self.reader.release(path)
        early[path] = (notified_ns, time.monotonic_ns(), sample)

    def _populated(self, wd: int, path: str) -> bool | None:
        young = self.young.get(wd)
        try:
            if young is not None:
                return events(os.pread(young.fd, 512, 0))[0]
            return events(read_file(f"{cgroup_path(self.root, path)}/cgroup.events"))[0]
        except OSError:
            return None  # removed: the agent's kept fds and rmdir probe tell its end

    def _make_young(self, wd: int, path: str) -> None:
        try:
            fd = os.open(f"{cgroup_path(self.root, path)}/cgroup.events",
                         os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self.young[wd] = Young(path, fd, time.monotonic_ns() + YOUNG_FOR_NS)
        if len(self.young) == 1:  # else the next poll is due sooner already
            self._next_poll = time.monotonic() + YOUNG_POLL_S

    def _forget_young(self, wd: int) -> None:
        young = self.young.pop(wd, None)
        if young is not None:
            os.close(young.fd)
