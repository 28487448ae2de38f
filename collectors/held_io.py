"""Short syscalls made without letting go of the GIL.

`os.pread` and friends release the GIL around every syscall. For a syscall of microseconds on
an fd known to be ready (a kept cgroupfs file, a readable inotify fd, a non-blocking pipe)
that is all cost: getting the GIL back waits behind every other runnable thread, up to the
switch interval each. The kernel watch's path from a notice to the final read's hand-off is a
handful of such calls; made here, it keeps the GIL from the notice to the hand-off.

Only for calls that cannot block: an fd that may block would stall every thread. Functions
called through `ctypes.PyDLL` keep the GIL (ctypes releases it for `CDLL` ones).
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["pread", "read", "sched_yield", "write"]

_libc = ctypes.PyDLL(None, use_errno=True)
_c_pread = _libc.pread
_c_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
_c_pread.restype = ctypes.c_ssize_t
_c_read = _libc.read
_c_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_c_read.restype = ctypes.c_ssize_t
_c_write = _libc.write
_c_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_c_write.restype = ctypes.c_ssize_t
_c_sched_yield = _libc.sched_yield
_c_sched_yield.argtypes = []
_c_sched_yield.restype = ctypes.c_int

#: One buffer per thread: between the syscall and the copy out another thread may run.
_local = threading.local()


def _buffer(n: int) -> ctypes.Array[ctypes.c_char]:
    buf: ctypes.Array[ctypes.c_char] | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        buf = _local.buf = ctypes.create_string_buffer(n)
    return buf


def _error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))  # OSError picks the subclass (BlockingIOError, ...)


def pread(fd: int, n: int, offset: int) -> bytes:
    """os.pread, the GIL kept."""
    buf = _buffer(n)
    got = _c_pread(fd, buf, n, offset)
    if got < 0:
        raise _error()
    return ctypes.string_at(buf, got)


def read(fd: int, n: int) -> bytes:
    """os.read, the GIL kept: for an fd that is non-blocking or known to be readable."""
    buf = _buffer(n)
    got = _c_read(fd, buf, n)
    if got < 0:
        raise _error()
    return ctypes.string_at(buf, got)


def write(fd: int, data: bytes) -> int:
    """os.write, the GIL kept: for a non-blocking fd (a full pipe raises BlockingIOError)."""
    done = _c_write(fd, data, len(data))
    if done < 0:
        raise _error()
    return int(done)


def sched_yield() -> None:
    """os.sched_yield, the GIL kept: the CPU goes to another process (a task finishing its
    exit), not to a thread of ours that would then hold the GIL."""
    _c_sched_yield()
