"""A counter workload: increments a number in memory and writes it to a file every tick.

Run as `python3 counter.py FILE [--tick S] [--tcp] [--child]`:
- the value lives in the process's memory, so a restored checkpoint continues from the
  checkpointed value (the file only shows it);
- the file is replaced atomically (write + rename) and no file stays open between ticks, so
  CRIU has nothing to reconcile on restore;
- `--tcp` keeps an established loopback TCP connection (both ends in this process), which CRIU
  refuses to dump without --tcp-established;
- `--child` forks once, so the process tree has two members (parent counts, child sleeps).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.cgroups import TestCgroup


def read_counter(path: Path, timeout: float = 10.0) -> int:
    """The last value written; waits for the first write."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text())
        if time.monotonic() > deadline:
            raise TimeoutError(f"counter {path} was never written")
        time.sleep(0.01)


def wait_advance(path: Path, beyond: int, timeout: float = 10.0) -> int:
    """Wait until the counter exceeds `beyond`; returns the value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = read_counter(path, timeout)
        if value > beyond:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"counter {path} stayed at {value}")
        time.sleep(0.01)


def argv(path: Path, *, tick: float = 0.01, tcp: bool = False, child: bool = False) -> list[str]:
    out = [sys.executable, str(Path(__file__).resolve()), str(path), "--tick", str(tick)]
    if tcp:
        out.append("--tcp")
    if child:
        out.append("--child")
    return out


def start_in(cg: TestCgroup, path: Path, **kwargs: bool | float) -> subprocess.Popen[bytes]:
    """A counter in `cg` (own session, no terminal: CRIU can dump it); waits for a first tick."""
    proc = cg.spawn(
        argv(path, **kwargs),  # type: ignore[arg-type]
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    read_counter(path)
    return proc


def assert_stalled(path: Path, cg: TestCgroup, wait: float = 0.3) -> None:
    """Neither the counter nor the cgroup's CPU time moves for `wait` seconds."""
    c0, u0 = read_counter(path), cg.cpu_usage_usec()
    time.sleep(wait)
    c1, u1 = read_counter(path), cg.cpu_usage_usec()
    assert c1 == c0, f"counter moved while frozen: {c0} -> {c1}"
    assert u1 == u0, f"usage_usec moved while frozen: {u0} -> {u1}"


def assert_running(path: Path, cg: TestCgroup) -> None:
    """Both the counter and the cgroup's CPU time advance."""
    c0, u0 = read_counter(path), cg.cpu_usage_usec()
    wait_advance(path, c0)
    deadline = time.monotonic() + 5
    while cg.cpu_usage_usec() == u0:
        assert time.monotonic() < deadline, "usage_usec did not advance"
        time.sleep(0.02)


def main(args: list[str]) -> None:
    path = Path(args[0])
    tick = float(args[args.index("--tick") + 1]) if "--tick" in args else 0.01
    keep: list[socket.socket] = []
    if "--tcp" in args:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.create_connection(lsock.getsockname())
        server, _ = lsock.accept()
        keep += [lsock, client, server]
    if "--child" in args and os.fork() == 0:
        while True:
            time.sleep(1)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    while True:
        n += 1
        tmp.write_text(str(n))
        os.replace(tmp, path)
        time.sleep(tick)


if __name__ == "__main__":
    main(sys.argv[1:])
