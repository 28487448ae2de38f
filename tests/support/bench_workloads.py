"""Synthetic workloads for the push benchmarks: every sample part filled, as a busy host's."""

from __future__ import annotations

from types import MappingProxyType

from agent.model.snapshot import WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.samples import (
    CgroupSample,
    CpuSample,
    IoDeviceSample,
    MemorySample,
    PidsSample,
    Pressure,
    PressureLine,
    PressureSample,
)

N = 1000


def workload(i: int) -> WorkloadState:
    cid = f"{i:064x}"
    cgroup = f"/system.slice/docker-{cid}.scope"
    ident = WorkloadIdentity(cid, WorkloadKind.CONTAINER, "docker", f"app-{i}", cgroup, 1000 + i)
    line = PressureLine(0.5, 0.2, 0.1, 123456 + i)
    stat = {k: 4096 * (i + j) for j, k in enumerate(
        ("anon", "file", "kernel", "shmem", "file_mapped", "active_file", "inactive_file",
         "pgfault", "pgmajfault"))}
    sample = CgroupSample(
        path=cgroup, inode=1000 + i, monotonic_ns=0, wall_ns=0,
        cpu=CpuSample(10**9 + i, 6 * 10**8, 4 * 10**8, 100, 3, 5000, None, None, 50000, 100000,
                      100),
        memory=MemorySample(current=10**8 + i, peak=2 * 10**8, max=5 * 10**8, swap_current=0,
                            stat=MappingProxyType(stat),
                            events=MappingProxyType({"max": 1, "oom": 0, "oom_kill": 0})),
        io=(IoDeviceSample(8, 0, "sda", 10**6 * i, 10**6, 100, 200),),
        pids=PidsSample(12, 100, 20, 0),
        pressure=PressureSample(Pressure(line, line), Pressure(line, line), Pressure(line, line)),
        populated=True, frozen=False,
    )
    return WorkloadState(ident, sample)
