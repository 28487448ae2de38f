"""collectors.held_io: the same results as os.*, and the GIL kept through the syscall."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from collectors import held_io


def test_pread_and_read_give_what_os_gives(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(bytes(range(256)) * 40)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert held_io.pread(fd, 100, 7) == os.pread(fd, 100, 7)
        assert held_io.pread(fd, 65536, 0) == f.read_bytes()
        assert held_io.pread(fd, 10, 1 << 20) == b""
        assert held_io.read(fd, 5) == bytes(range(5))
    finally:
        os.close(fd)


def test_errors_are_the_oserror_subclasses_os_raises() -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            held_io.read(r, 10)
        chunk = b"x" * 4096
        with pytest.raises(BlockingIOError):
            while True:
                held_io.write(w, chunk)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(OSError) as bad:
        held_io.pread(r, 10, 0)
    assert bad.value.errno == errno.EBADF


def _counted_during(call: Callable[[int], bytes]) -> int:
    """How far another thread counts while `call` waits ~0.3 s for a pipe's byte."""
    r, w = os.pipe()
    writer = subprocess.Popen(["sh", "-c", "sleep 0.3; printf x"], stdout=w)
    os.close(w)
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = count[0]
        assert call(r) == b"x"
        after = count[0]
    finally:
        stop.set()
        t.join()
        writer.wait()
        os.close(r)
    return after - before


def test_the_gil_is_kept_through_the_syscall() -> None:
    """os.read lets the other thread run while it waits; held_io.read does not (for an fd
    that cannot block, that saves the wait for the GIL afterwards)."""
    # A long switch interval: the other thread runs only when the GIL is let go, not at a
    # forced switch just before or after the call (up to 17 ms of its counting there once
    # made `kept` 1/17 of `released` in CI on a busy host).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        released = _counted_during(lambda fd: os.read(fd, 1))
        kept = _counted_during(lambda fd: held_io.read(fd, 1))
    finally:
        sys.setswitchinterval(interval)
    assert released > 20 * max(kept, 1), (released, kept)
