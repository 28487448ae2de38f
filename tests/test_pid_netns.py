"""PidNetns on real processes: a namespace per process stat'ed once, not every scan; a new
process is found at the next scan; a process that moves itself (unshare in place) shows in
its new namespace within `recheck_every` scans; an ended process leaves the result."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from collectors.netns import host_netns, pid_netns
from collectors.pid_netns import PidNetns
from tests.conftest import IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: unshares a network namespace")

PROC = Path("/proc")


def where(by: dict[tuple[int, int], list[int]], pid: int) -> tuple[int, int] | None:
    return next((key for key, pids in by.items() if pid in pids), None)


def test_processes_are_stated_once_and_moves_show_within_the_recheck() -> None:
    cache = PidNetns(recheck_every=3)
    host = host_netns()
    mover = subprocess.Popen(["sh", "-c", "read x; exec unshare --net sleep 30"],
                             stdin=subprocess.PIPE)
    try:
        first = cache.scan(PROC)
        assert where(first, mover.pid) == host and cache.stats >= 1
        again = cache.scan(PROC)
        assert where(again, mover.pid) == host
        assert cache.stats < 5  # only processes new since the first scan
        assert mover.stdin is not None
        mover.stdin.write(b"go\n")
        mover.stdin.close()
        moved = None
        for _ in range(250):
            moved = pid_netns(mover.pid)
            if moved is not None and moved != host:
                break
            time.sleep(0.02)
        assert moved is not None and moved != host
        seen = [where(cache.scan(PROC), mover.pid) for _ in range(3)]
        assert moved in seen  # by the recheck at the latest
        assert where(cache.scan(PROC), mover.pid) == moved
        newcomer = subprocess.Popen(["sleep", "30"])
        try:
            assert where(cache.scan(PROC), newcomer.pid) == host
        finally:
            newcomer.kill()
            newcomer.wait()
        assert where(cache.scan(PROC), newcomer.pid) is None
    finally:
        mover.kill()
        mover.wait()
