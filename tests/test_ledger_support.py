"""Helpers for the ledger tests (no tests here): identities, snapshots, real samples, and a
standalone ledger runner used as the subprocess that the crash test kills with SIGKILL."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.core.component import AgentContext
from agent.core.store import Store
from agent.ledger.ledger import Ledger
from agent.ledger.storage import LedgerStorage
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.cgroupfs import CgroupReader
from collectors.layout import detect_layout
from collectors.samples import CgroupSample, CpuSample, IoDeviceSample, MemorySample, PidsSample
from tests.support.tracked import track

BOOT = "boot-a"


def host(boot: str = BOOT) -> HostInfo:
    return HostInfo(hostname="h", boot_id=boot, machine_id="m", kernel="k",
                    cgroup_layout="hybrid", cpus=2, memory_bytes=1 << 30, agent_version="t")


def ident(path: str, inode: int, **kw: Any) -> WorkloadIdentity:
    kind = kw.pop("kind", WorkloadKind.CONTAINER)
    return WorkloadIdentity(id=kw.pop("id", path), kind=kind, runtime=kw.pop("runtime", "runc"),
                            name=kw.pop("name", path.rsplit("/", 1)[-1]), cgroup=path,
                            inode=inode, **kw)


def synth(path: str, inode: int, t_s: float, cpu: int | None = None, mem: int | None = None,
          io: tuple[int, int, int, int] | None = None, pids: int | None = None,
          mem_peak: int | None = None, pids_peak: int | None = None,
          stat: Mapping[str, int] | None = None) -> CgroupSample:
    """A synthetic sample at wall time t_s (monotonic follows wall in these tests)."""
    t = int(t_s * 1e9)
    return CgroupSample(
        path=path, inode=inode, monotonic_ns=t, wall_ns=t,
        cpu=CpuSample(usage_usec=cpu) if cpu is not None else None,
        memory=MemorySample(current=mem, peak=mem_peak) if mem is not None else None,
        io=(IoDeviceSample(8, 0, "sda", rbytes=io[0], wbytes=io[1], rios=io[2], wios=io[3]),)
        if io is not None else None,
        pids=PidsSample(current=pids, peak=pids_peak) if pids is not None else None,
        stat=MappingProxyType(dict(stat or {})),
    )


def snapshot(states: list[tuple[WorkloadIdentity, CgroupSample]], boot: str = BOOT,
             seq: int = 1, extras: Mapping[str, object] | None = None) -> Snapshot:
    wall = max((s.wall_ns for _, s in states), default=time.time_ns())
    return Snapshot(seq=seq, wall_ns=wall, monotonic_ns=wall, cycle_cpu_ns=0, host=host(boot),
                    workloads=MappingProxyType({i.id: WorkloadState(i, s) for i, s in states}),
                    extras=MappingProxyType(dict(extras or {})))


def open_ledger(db: Path, period: int = 3600, grace: int = 120) -> Ledger:
    return Ledger(LedgerStorage(track(Store(db))), host_id="host-1", period_seconds=period,
                  grace_seconds=grace)


def context(state_dir: Path, ledger_conf: Mapping[str, Any] | None = None) -> AgentContext:
    return AgentContext(config={"ledger": dict(ledger_conf or {})}, state_dir=state_dir,
                        layout=detect_layout(), store=track(Store(state_dir / "agent.db")))


# -- real samples ------------------------------------------------------------------------

def real_sample(rel: str) -> CgroupSample:
    """Read one cgroup from the kernel in full with the agent's own reader."""
    with CgroupReader(detect_layout()) as reader:
        return reader.read(rel)


def read_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# -- the crash-test runner -----------------------------------------------------------------

def run(argv: list[str]) -> int:
    """Sample the given cgroups every --interval s into the ledger at --db until killed."""
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--period", type=int, default=3600)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--ready", required=True, help="file touched after each committed cycle")
    p.add_argument("paths", nargs="+")
    args = p.parse_args(argv)
    ledger = open_ledger(Path(args.db), period=args.period)
    boot = read_boot_id()
    seq = 0
    while True:
        states = []
        for rel in args.paths:
            s = real_sample(rel)
            if not s.vanished and s.inode is not None:
                states.append((ident(rel, s.inode), s))
        seq += 1
        ledger.observe_snapshot(snapshot(states, boot, seq), boot)
        Path(args.ready).write_text(str(seq))
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
