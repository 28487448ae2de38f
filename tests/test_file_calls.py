"""collectors.file_calls: the GIL-keeping open/pread/close read what os's read, fail as os's
fail, really keep the GIL (another thread does not run while one blocks), and are the ones the
final-read thread reads with."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.kernel.final_read import FinalReadThread
from collectors import file_calls
from collectors.cgroupfs import CgroupReader
from collectors.file_calls import RELEASING, FileCalls
from collectors.layout import detect_layout
from collectors.samples import CgroupSample


def _in_thread(hold: bool, fn: object) -> object:
    out: list[object] = []

    def run() -> None:
        if hold:
            file_calls.hold_gil_in_this_thread()
        out.append(fn())  # type: ignore[operator]

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_held_calls_read_what_os_reads(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 1000)  # past the 64 KiB buffer

    def read_all() -> tuple[bytes, bytes, bool]:
        calls = file_calls.current()
        dfd = calls.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
        fd = calls.open("big", os.O_RDONLY, dir_fd=dfd)
        head = calls.pread(fd, 100, 10)
        whole, at = [], 0
        while chunk := calls.pread(fd, 1 << 16, at):
            whole.append(chunk)
            at += len(chunk)
        calls.close(fd)
        calls.close(dfd)
        return head, b"".join(whole), calls is not RELEASING

    held = _in_thread(True, read_all)
    assert held == (bytes(range(10, 110)), big.read_bytes(), True)
    assert _in_thread(False, read_all) == (held[0], held[1], False)  # type: ignore[index]


@pytest.mark.parametrize(("path", "code"), [("/nonexistent/x", errno.ENOENT),
                                            ("/etc/hostname/x", errno.ENOTDIR)])
def test_held_calls_fail_as_os_fails(path: str, code: int) -> None:
    def fail() -> tuple[type[OSError], int | None, str]:
        try:
            file_calls.current().open(path, os.O_RDONLY)
        except OSError as e:
            return type(e), e.errno, str(e.filename)
        raise AssertionError("opened")

    with pytest.raises(OSError) as os_err:
        os.open(path, os.O_RDONLY)
    assert _in_thread(True, fail) == (type(os_err.value), code, path)

    def bad_fd() -> int | None:
        try:
            file_calls.current().pread(987_654, 10, 0)
        except OSError as e:
            return e.errno
        raise AssertionError("read")

    assert _in_thread(True, bad_fd) == errno.EBADF


def _others_progress_while_blocked(tmp_path: Path, hold: bool) -> int:
    """Ticks another thread made while this one's open() of a FIFO blocked (a writer opens
    it after 0.4 s)."""
    fifo = tmp_path / f"fifo-{hold}"
    os.mkfifo(fifo)
    ticks: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())

    def blocked_open() -> tuple[float, float]:
        writer = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.4; echo x > {fifo}"])
        t = threading.Thread(target=ticker)
        t.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        fd = file_calls.current().open(str(fifo), os.O_RDONLY)
        t1 = time.monotonic()
        stop.set()
        t.join()
        os.close(fd)
        writer.wait()
        return t0, t1

    t0, t1 = _in_thread(hold, blocked_open)  # type: ignore[misc]
    assert t1 - t0 > 0.2  # it did block
    return sum(1 for x in ticks if t0 + 0.05 < x < t1 - 0.05)


def test_a_held_call_keeps_the_gil(tmp_path: Path) -> None:
    assert _others_progress_while_blocked(tmp_path, hold=False) > 1000
    assert _others_progress_while_blocked(tmp_path, hold=True) == 0


def test_the_final_read_thread_reads_with_held_calls() -> None:
    got: list[tuple[FileCalls, CgroupSample]] = []
    done = threading.Event()
    reader = CgroupReader(detect_layout())
    reads = FinalReadThread(reader)
    try:
        def deliver(sample: CgroupSample) -> None:
            got.append((file_calls.current(), sample))
            done.set()
        reads.submit("/", time.monotonic_ns(), deliver)
        assert done.wait(10)
    finally:
        reads.close()
        reader.close()
    calls, sample = got[0]
    assert calls is not RELEASING and calls.pread is not os.pread
    assert sample.cpu is not None  # the root's counters, read through them
