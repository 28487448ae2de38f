"""The open/pread/close a cgroup read uses: the os module's, or ones that keep the GIL.

os.pread and friends release the GIL around the syscall, so another thread may take it, and
getting it back waits up to the switch interval while that thread runs. A final read at
`populated 0` makes ~50 such calls (26 preads, 11 opens, 11 closes on a hybrid host), each a
few µs in kernfs: while the event loop is busy, those waits, not the reads, set how long the
read takes, and the runtime may remove the cgroup meanwhile. A thread that must finish its reads
promptly calls hold_gil_in_this_thread(): its cgroupfs calls then go through ctypes.PyDLL,
which keeps the GIL across the call. Only for cgroupfs files: they are generated from kernel
memory, so the GIL is never held across a wait on a disk or a peer.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["RELEASING", "FileCalls", "current", "hold_gil_in_this_thread"]

_AT_FDCWD = -100
_BUF = 65536


class FileCalls(NamedTuple):
    #: open(path, flags, *, dir_fd=None) -> fd, as os.open
    open: Callable[..., int]
    #: pread(fd, n, offset) -> bytes, as os.pread
    pread: Callable[[int, int, int], bytes]
    close: Callable[[int], None]


RELEASING = FileCalls(os.open, os.pread, os.close)
_local = threading.local()


def current() -> FileCalls:
    """The calls this thread reads cgroupfs with."""
    calls: FileCalls = getattr(_local, "calls", RELEASING)
    return calls


def hold_gil_in_this_thread() -> None:
    """From now on this thread's cgroupfs reads keep the GIL (see the module's doc)."""
    _local.calls = _holding()


def _holding() -> FileCalls:
    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is kept across each call
    c_openat, c_pread, c_close = libc.openat, libc.pread, libc.close
    c_openat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    c_openat.restype = ctypes.c_int
    c_pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long)
    c_pread.restype = ctypes.c_ssize_t
    c_close.argtypes = (ctypes.c_int,)
    c_close.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(_BUF)  # this thread's only
    string_at, get_errno, fsencode = ctypes.string_at, ctypes.get_errno, os.fsencode

    def failed(path: object = None) -> OSError:
        err = get_errno()
        return OSError(err, os.strerror(err), path) if path is not None else \
            OSError(err, os.strerror(err))

    def open_(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd: int = c_openat(_AT_FDCWD if dir_fd is None else dir_fd, fsencode(path), flags)
        if fd < 0:
            raise failed(path)
        return fd

    def pread(fd: int, n: int, offset: int) -> bytes:
        got: int = c_pread(fd, buf, min(n, _BUF), offset)
        if got < 0:
            raise failed()
        return string_at(buf, got)

    def close(fd: int) -> None:
        if c_close(fd) < 0:
            raise failed()

    return FileCalls(open_, pread, close)
