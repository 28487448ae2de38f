"""collectors.held_io: the same results as os.*, and the GIL kept through the syscall."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
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
    """How often a thread that sleeps 0.5 ms at a time got the GIL back while `call` waited
    ~0.3 s for a pipe's byte. It lets the GIL go by itself, so the count does not hang on the
    interpreter's switch interval or on how busy the host is."""
    r, w = os.pipe()
    count = [0]
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            time.sleep(0.0005)
            count[0] += 1

    t = threading.Thread(target=tick)
    t.start()
    writer = subprocess.Popen(["sh", "-c", "sleep 0.3; printf x"], stdout=w)
    os.close(w)
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
    released = _counted_during(lambda fd: os.read(fd, 1))
    kept = _counted_during(lambda fd: held_io.read(fd, 1))
    assert released > 20 * max(kept, 1), (released, kept)
