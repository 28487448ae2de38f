"""The benchmarks' host CPU shares (tests/support/host_cpu.py) from /proc/stat's cpu line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.host_cpu import HostCpu

_LINE = ("cpu  {user} 0 {system} {idle} {iowait} 0 {softirq} {steal} 0 0\n"
         "cpu0 1 2 3 4 5 6 7 8 9 10\n")


def test_shares_are_the_deltas_since_the_start(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_LINE.format(user=100, system=50, idle=1000, iowait=10, softirq=5, steal=7))
    host = HostCpu(stat)
    # 400 ticks since: 120 busy (user 90, system 20, softirq 10), 180 idle (170 + 10 iowait),
    # 100 stolen.
    stat.write_text(_LINE.format(user=190, system=70, idle=1170, iowait=20, softirq=15,
                                 steal=107))
    shares = host.shares()
    assert shares == pytest.approx({"busy": 30.0, "idle": 45.0, "steal": 25.0})
    assert host.summary() == ("host CPU: busy 30 %, idle 45 %, "
                              "stolen by the hypervisor 25.0 %")


def test_the_real_proc_stat_gives_shares_that_add_up() -> None:
    host = HostCpu()
    time.sleep(0.1)  # ~20 ticks of two CPUs at USER_HZ 100
    shares = host.shares()
    assert all(v >= 0 for v in shares.values())
    assert sum(shares.values()) == pytest.approx(100.0)
