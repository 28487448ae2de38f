"""A cgroup made and removed before the kernel watch got to its IN_CREATE (the watch thread
behind, here held off with its lock) is still told: started and stopped, with the CPU the rmdir
probe kept for its path, and billed (its final sample published)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.kernel.final_read_process import FinalReadProcess
from agent.kernel.watched import WatchedCgroup
from agent.model.snapshot import WorkloadIdentity
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.test_events_harness import Harness, started
from tests.test_final_cpu_probe import take_by_path


async def _unseen_life(h: Harness, cgroups: CgroupFactory) -> tuple[TestCgroup, int, int]:
    """A life made, run and removed while the watch thread is held off (it meets the
    IN_CREATE after the rmdir); its kernel CPU counter and inode."""
    watcher = h.comp.watcher
    assert watcher is not None
    parent = cgroups.create()
    await h.wait_for(lambda: watcher.cgroups.get(parent.rel))
    with watcher.lock:
        life = parent.child("unseen")
        proc = life.spawn(["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        assert proc.wait(timeout=30) == 0
        usage = life.cpu_usage_usec()
        inode = life.ref_dir.stat().st_ino
        await asyncio.sleep(0.05)  # the final-read process's read of the end reaches the agent
        life.remove()
    return life, usage, inode


async def _told_once(h: Harness, life: TestCgroup, usage: int, inode: int) -> dict[str, object]:
    """Started (coalesced) and stopped once, with the kernel's last CPU counter, and billed
    (its final sample published); the stop's fields."""
    stops = await h.wait_for(lambda: h.events("container_stopped", life.rel))
    assert len(stops) == 1
    assert stops[0].fields["cpu_usage_usec"] == usage
    assert stops[0].fields["final"] is True
    starts = h.events("container_started", life.rel)
    assert len(starts) == 1 and starts[0].fields.get("coalesced") is True
    finals = [s for who, s in h.finals if who.cgroup == life.rel]
    assert len(finals) == 1 and finals[0].inode == inode
    assert finals[0].cpu is not None and finals[0].cpu.usage_usec == usage
    await asyncio.sleep(0.3)  # nothing more comes for it
    assert len(h.events("container_stopped", life.rel)) == 1
    return stops[0].fields


def test_a_life_the_watch_never_saw_is_told_with_its_final_cpu(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    """Final reads in the agent (no process reading ahead): the CPU the rmdir probe kept."""
    async def body() -> None:
        async with started(tmp_path, final_read_process=False) as h:
            probe = h.comp.rmdir.probe
            assert probe is not None, "the rmdir probe did not load (make builds it)"
            life, usage, inode = await _unseen_life(h, cgroups)
            fields = await _told_once(h, life, usage, inode)
            assert fields.get("final_partial") is True  # CPU only: from the rmdir
            assert "memory_peak_bytes" not in fields
            assert take_by_path(probe, life.rel) is None  # taken once

    asyncio.run(body())


@pytest.mark.parametrize("rmdir_probe", [True, False])
def test_a_life_the_watch_never_saw_gets_the_final_read_process_s_whole_read(
        cgroups: CgroupFactory, tmp_path: Path, rmdir_probe: bool) -> None:
    """The final-read process looked at the new directory at its IN_CREATE and read the
    life's end: that whole sample (memory, pids, IO too) is its final, not the rmdir's CPU;
    without the rmdir probe (no BTF, no libbpf) the life is still told."""
    async def body() -> None:
        async with started(tmp_path, rmdir_probe=rmdir_probe) as h:
            assert (h.comp.rmdir.probe is not None) == rmdir_probe
            reads = h.comp.final_reads
            assert isinstance(reads, FinalReadProcess), "the final-read process did not start"
            life, usage, inode = await _unseen_life(h, cgroups)
            early_before = reads.early_reads
            fields = await _told_once(h, life, usage, inode)
            assert "final_partial" not in fields
            assert fields.get("memory_peak_bytes") is not None
            assert fields.get("pids_peak") is not None
            assert reads.early_reads == early_before + 1
            assert life.rel not in [p for p, e in reads._early.items() if not e[2]]

    asyncio.run(body())


def test_a_life_removed_while_the_watch_opens_its_files_is_told(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    """The watch opened the new directory, then the cgroup went before its files were
    opened (1 life in 12,000 in a soak at 50 lives/s had no event at all): still told as
    unseen. The removal is put in that window by the test."""
    async def body() -> None:
        async with started(tmp_path) as h:
            comp = h.comp
            assert comp.rmdir.probe is not None, "the rmdir probe did not load (make builds it)"
            watcher = comp.watcher
            assert watcher is not None
            parent = cgroups.create()
            await h.wait_for(lambda: watcher.cgroups.get(parent.rel))
            watch = watcher.watch
            removed: list[str] = []

            def removed_first(identity: WorkloadIdentity, new: bool,
                              v1_paths: Mapping[str, str] | None = None,
                              dir_fd: int | None = None) -> WatchedCgroup | None:
                if identity.cgroup == life.rel:
                    life.remove()  # the directory is open (dir_fd): its files are not yet
                    removed.append(identity.cgroup)
                return watch(identity, new, v1_paths, dir_fd)

            with watcher.lock:
                life = parent.child("in-between")
                proc = life.spawn(["/bin/sh", "-c",
                                   "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
                assert proc.wait(timeout=30) == 0
                usage = life.cpu_usage_usec()
                watcher.watch = removed_first  # type: ignore[method-assign]
            stops = await h.wait_for(lambda: h.events("container_stopped", life.rel))
            assert removed == [life.rel]
            assert len(stops) == 1 and stops[0].fields["cpu_usage_usec"] == usage
            assert len(h.events("container_started", life.rel)) == 1

    asyncio.run(body())


def test_a_life_its_own_watch_follows_is_not_taken_by_path(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    """Told as unseen by mistake (a listing that names a directory unwatched a moment ago),
    a cgroup the watch followed keeps its rmdir counter for its own final read."""
    async def body() -> None:
        async with started(tmp_path) as h:
            comp = h.comp
            probe = comp.rmdir.probe
            assert probe is not None, "the rmdir probe did not load (make builds it)"
            assert comp.watcher is not None
            life = cgroups.create()
            proc = life.spawn(["sleep", "60"])
            await h.wait_for(lambda: h.events("container_started", life.rel))
            inode = life.ref_dir.stat().st_ino
            with comp.watcher.lock:  # its end and removal wait in the watch's queue
                usage = life.cpu_usage_usec()
                life.remove()
                assert proc.wait(timeout=10) is not None
                comp.on_unseen(life.rel)
                assert probe.id_by_path(life.rel) == inode
                got = take_by_path(probe, life.rel)  # still there: on_unseen left it
                assert got is not None and got[0] == inode
                assert got[1].usage_usec >= usage
            assert not h.events("container_stopped", life.rel)

    asyncio.run(body())
