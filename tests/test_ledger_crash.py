"""kill -9 of a process running the ledger against a real cgroup, then a restart: the totals
are still exactly the kernel's delta and no row is duplicated (needs root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cgroups import CgroupFactory
from tests.test_ledger_support import open_ledger

REPO = Path(__file__).resolve().parents[1]


def _runner(db: Path, ready: Path, rel: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_ledger_support", "--db", str(db), "--ready",
         str(ready), "--interval", "0.05", rel],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _wait_cycles(ready: Path, proc: subprocess.Popen[bytes], n: int) -> None:
    """Until the runner has committed n more cycles (ready holds its cycle count)."""
    def seq() -> int:
        try:
            return int(ready.read_text() or 0)
        except (OSError, ValueError):
            return 0
    target = seq() + n
    deadline = time.monotonic() + 30
    while seq() < target:
        assert proc.poll() is None, "ledger runner died"
        assert time.monotonic() < deadline, "ledger runner made no progress"
        time.sleep(0.02)


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_kill9_mid_period_and_restart_counts_exactly_once(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    db, ready = tmp_path / "ledger.db", tmp_path / "ready"
    first = _runner(db, ready, cg.rel)
    procs = [first]
    try:
        _wait_cycles(ready, first, 2)  # the baseline is committed
        k0 = cg.cpu_usage_usec()  # nothing runs in the cgroup yet: a still counter
        burner = cg.burn(2.0)
        time.sleep(0.6)
        _kill9(first)  # mid-period, very likely mid-transaction at 20 cycles/s
        time.sleep(0.3)  # the cgroup lives on and keeps using CPU while no agent runs
        second = _runner(db, ready, cg.rel)
        procs.append(second)
        _wait_cycles(ready, second, 2)
        _kill9(second)  # a second crash, then a third run that sees the burner end
        third = _runner(db, ready, cg.rel)
        procs.append(third)
        burner.wait(timeout=30)
        _wait_cycles(ready, third, 3)
        k1 = cg.cpu_usage_usec()
        _kill9(third)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill9(p)
    led = open_ledger(db)
    rows = [r for r in led.storage.rows(0, 10**11, include_open=True) if r.cgroup == cg.rel]
    cpu = [r for r in rows if r.meter == "cpu_usec"]
    assert sum(r.quantity for r in cpu) == k1 - k0 > 200_000
    keys = [(r.boot_id, r.inode, r.subject, r.meter, r.period_start) for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    assert all(r.revision == 0 for r in rows)
