"""Facts about the host, read once at start-up (and refreshed on SIGHUP)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import psutil

from agent import __version__
from agent.model.snapshot import HostInfo
from collectors.layout import CgroupLayout


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def memory_bytes() -> int:
    """Physical memory (psutil: MemTotal from /proc/meminfo, parsed by a maintained reader)."""
    return int(psutil.virtual_memory().total)


def read_host_info(layout: CgroupLayout, facts: Mapping[str, object] | None = None) -> HostInfo:
    return HostInfo(
        hostname=socket.gethostname(),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        machine_id=_read("/etc/machine-id"),
        kernel=os.uname().release,
        cgroup_layout=layout.kind.value,
        cpus=os.cpu_count() or 0,
        memory_bytes=memory_bytes(),
        agent_version=__version__,
        facts=MappingProxyType(dict(facts or {})),
    )
