"""The snapshot path: lifecycle safety net, one started/stopped pair whoever saw it first."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.support.tracked import track
from tests.test_events_harness import Harness, started

HOST = HostInfo(socket.gethostname(), "b", "m", "k", "hybrid", 2, 1 << 30, "test")


def snap(seq: int, *states: WorkloadState) -> Snapshot:
    return Snapshot(seq, time.time_ns(), time.monotonic_ns(), 0, HOST,
                    MappingProxyType({s.identity.id: s for s in states}))


def _sleeper(h: Harness, cgroups: CgroupFactory, box: str
             ) -> tuple[TestCgroup, subprocess.Popen[bytes], CgroupReader, WorkloadState]:
    """A test cgroup running a sleeping process, and its state as a cycle would read it."""
    cg = cgroups.create()
    proc = cg.spawn([sys.executable, "-S", "-c", "import time; time.sleep(30)"])
    reader = track(CgroupReader(h.ctx.layout))
    who = WorkloadIdentity(box, WorkloadKind.CONTAINER, "runc", "box",
                           cg.rel, cg.ref_dir.stat().st_ino, init_pid=proc.pid)
    return cg, proc, reader, WorkloadState(who, reader.read(cg.rel, member_pid=proc.pid))


def test_kernel_and_discovery_give_one_pair(cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        # No tree watch: the cgroup becomes known through a snapshot, as discovery reports it.
        async with started(tmp_path, watch_new_cgroups=False) as h:
            await h.comp.on_snapshot(snap(1))
            cg, proc, _reader, state = _sleeper(h, cgroups, "box-1")
            await h.comp.on_snapshot(snap(2, state))
            await h.comp.on_snapshot(snap(3, state))
            proc.kill()
            proc.wait()
            await h.wait_for(lambda: h.events("container_stopped", "box-1"))
            await h.comp.on_snapshot(snap(4))  # gone from discovery too: nothing new
            types = [e.type for e in h.events(container="box-1")]
            assert types == ["container_started", "container_stopped"]
            stopped = h.events("container_stopped", "box-1")[0]
            assert stopped.fields["final"] is True
            assert stopped.container is not None and stopped.container.name == "box"
            assert stopped.fields["cpu_usage_usec"] == cg.cpu_usage_usec()
    asyncio.run(body())


def test_workload_seen_only_by_cycles(tmp_path: Path) -> None:
    """A cgroup the watcher cannot follow (here: a path that is not in the tree) still gets
    started and stopped from the snapshots, the stop marked not final."""
    async def body() -> None:
        async with started(tmp_path, watch_new_cgroups=False) as h:
            who = WorkloadIdentity("/nowhere/x", WorkloadKind.CGROUP, "", "x", "/nowhere/x", 5)
            sample = CgroupSample("/nowhere/x", 5, time.monotonic_ns(), time.time_ns(),
                                  populated=True)
            await h.comp.on_snapshot(snap(1))
            await h.comp.on_snapshot(snap(2, WorkloadState(who, sample)))
            await h.comp.on_snapshot(snap(3))
            events = h.events(container="/nowhere/x")
            assert (events[0].type, events[0].fields["source"]) == (
                "container_started", "discovery")
            assert events[1].type == "container_stopped" and events[1].fields["final"] is False
            assert len(events) == 2
    asyncio.run(body())


def test_a_snapshot_older_than_the_rmdir_does_not_start_it_again(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    """A cycle read the cgroup while it ran; the life ended and the cgroup was removed before
    that snapshot, the first to hold it, was published (test_churn saw it): no second start
    and no second stop."""
    async def body() -> None:
        async with started(tmp_path) as h:  # the kernel path follows the new cgroup
            await h.comp.on_snapshot(snap(1))
            cg, proc, reader, stale = _sleeper(h, cgroups, "box-2")
            await h.wait_for(lambda: h.events("container_started", cg.rel))
            proc.kill()
            proc.wait()
            await h.wait_for(lambda: h.events("container_stopped", cg.rel))
            reader.release(cg.rel)
            cg.remove()
            await h.wait_for(lambda: stale.identity.incarnation in h.comp._gone)
            await h.comp.on_snapshot(snap(2, stale))  # collected before the rmdir
            await h.comp.on_snapshot(snap(3))
            got = [(e.type, e.fields.get("source"), e.fields.get("final"))
                   for e in h.events() if e.container and e.container.cgroup == cg.rel]
            assert got == [("container_started", "kernel", None),
                           ("container_stopped", None, True)], got
    asyncio.run(body())


def test_a_large_snapshot_is_compared_in_parts_with_the_loop_let_go_between(
        tmp_path: Path) -> None:
    """Workloads seen only by cycles, more than YIELD_EVERY: a callback due meanwhile runs
    before the comparison ends (requests are answered between the parts), and every
    workload is still started once."""
    from agent.events.component import YIELD_EVERY

    async def body() -> None:
        async with started(tmp_path, watch_new_cgroups=False) as h:
            states = []
            for i in range(YIELD_EVERY * 2 + 10):
                path = f"/nowhere/w{i}"
                who = WorkloadIdentity(path, WorkloadKind.CGROUP, "", f"w{i}", path, 100 + i)
                states.append(WorkloadState(who, CgroupSample(
                    path, 100 + i, time.monotonic_ns(), time.time_ns(), populated=True)))
            await h.comp.on_snapshot(snap(1))
            ran: list[int] = []
            loop = asyncio.get_running_loop()
            loop.call_soon(lambda: ran.append(len(h.events("container_started"))))
            await h.comp.on_snapshot(snap(2, *states))
            assert ran and 0 < ran[0] < len(states)  # ran part-way through the comparison
            started_ = [e.container.cgroup for e in h.events("container_started")
                        if e.container is not None]
            assert sorted(started_) == sorted(s.identity.cgroup for s in states)
    asyncio.run(body())
