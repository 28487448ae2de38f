"""The agent's own process metrics and host memory, read through psutil, against the kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from agent.core.hostinfo import memory_bytes
from agent.exporters.exposition import self_families
from collectors.open_dirs import open_fd_count


def _values() -> dict[str, float]:
    return {f.name: f.samples[0].value for f in self_families()}


def test_own_fds_rss_and_cpu_match_proc_self() -> None:
    before = _values()
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(25)]
    try:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:  # burn CPU the counter must see
            pass
        after = _values()
        fds_now = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own fd
    finally:
        for fd in extra:
            os.close(fd)
    assert after["container_agent_process_open_fds"] == fds_now
    assert after["container_agent_process_open_fds"] >= before[
        "container_agent_process_open_fds"] + 25
    assert after["container_agent_process_cpu_seconds"] >= before[
        "container_agent_process_cpu_seconds"] + 0.25
    page = os.sysconf("SC_PAGE_SIZE")
    size, resident = (int(x) * page for x in Path("/proc/self/statm").read_text().split()[:2])
    assert abs(after["container_agent_process_resident_memory_bytes"] - resident) < 8 << 20
    assert abs(after["container_agent_process_virtual_memory_bytes"] - size) < 64 << 20


def test_open_fds_are_counted_without_listing_them_where_the_kernel_says() -> None:
    """Linux >= 6.2 gives the count as /proc/self/fd's size (one stat for 18,000 fds); the
    listing is the fallback. Both give the same number."""
    assert os.stat("/proc/self/fd").st_size > 0  # this host's kernel (6.18) has it
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]
    try:
        by_size = open_fd_count()
        by_listing = len(os.listdir("/proc/self/fd")) - 1
        by_psutil = max(0, psutil.Process().num_fds() - 1)
    finally:
        for fd in extra:
            os.close(fd)
    assert by_size == by_listing == by_psutil
    assert open_fd_count() == by_size - 40


def test_host_memory_is_memtotal() -> None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            assert memory_bytes() == int(line.split()[1]) * 1024
            return
    raise AssertionError("no MemTotal in /proc/meminfo")
