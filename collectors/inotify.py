"""Minimal inotify through ctypes (stdlib only): watches, and parsed events from a read."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from collectors import held_io

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_ONLYDIR = 0x01000000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str

    @property
    def overflow(self) -> bool:
        return bool(self.mask & IN_Q_OVERFLOW)


def raw_events(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(wd, mask, cookie, name) of each event in what a read of an inotify fd returned."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        yield wd, mask, cookie, data[offset : offset + length].split(b"\0", 1)[0]
        offset += length


def inotify_events(data: bytes) -> list[InotifyEvent]:
    return [InotifyEvent(wd, mask, cookie, os.fsdecode(name))
            for wd, mask, cookie, name in raw_events(data)]


class Inotify:
    """One inotify instance; `fd` is pollable with EPOLLIN (add_reader is fine here)."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self._poll: select.poll | None = None

    def pending(self) -> bool:
        """Events are waiting: one poll(0), no 64 KiB buffer and no BlockingIOError raised, as
        an empty read_events() costs (the reader asks before every cgroup it reads)."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
        return bool(self._poll.poll(0))

    def add_watch(self, path: str, mask: int) -> int:
        """Returns the watch descriptor; raises OSError (ENOENT when the path vanished)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the kernel already dropped it (directory removed).
        _libc.inotify_rm_watch(self.fd, wd)

    def read_events(self) -> list[InotifyEvent]:
        events: list[InotifyEvent] = []
        while True:
            try:
                data = held_io.read(self.fd, 65536)  # non-blocking: the GIL is kept
            except BlockingIOError:
                return events
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            events.extend(inotify_events(data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
