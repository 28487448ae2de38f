"""The kernel watch reads a batch's notices before its new directories: a `populated 0` must
not wait behind the lookups, watches and identification of cgroups made meanwhile (real
cgroups: the watch thread is held off with its lock while the batch builds up)."""

from __future__ import annotations

import asyncio
import time

from agent.events.lifecycle import identify
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.watched import WatchedCgroup
from agent.model.snapshot import WorkloadIdentity
from tests.support.cgroups import CgroupFactory


def test_a_populated_0_is_handled_before_the_batch_s_new_cgroups(
        cgroups: CgroupFactory) -> None:
    busy = cgroups.create("busy")
    proc = busy.spawn(["sleep", "60"])
    order: list[tuple[str, str]] = []

    def named(rel: str, ino: int) -> WorkloadIdentity:
        order.append(("new", rel))
        return identify(rel, ino)

    async def run() -> None:
        w = CgroupWatcher(cgroups.layout, named)
        w.follow_new = True
        w.on_emptied = lambda cg: order.append(("emptied", cg.path))
        w.start(asyncio.get_running_loop())
        try:
            cg = w.watch(identify(busy.rel, busy.ref_dir.stat().st_ino), new=False)
            assert isinstance(cg, WatchedCgroup) and cg.populated is True
            time.sleep(0.4)  # past the young cgroup's polling: only the notice tells
            with w.lock:  # the watch thread waits: the notices queue up in one batch
                made = [cgroups.create(f"new{i}") for i in range(5)]
                proc.kill()
                proc.wait()
                deadline = time.monotonic() + 5
                while "populated 0" not in busy.read(cgroups.ref_key, "cgroup.events"):
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
                time.sleep(0.05)  # the kernel's notice (a work item) reaches inotify
            deadline = time.monotonic() + 5
            while len(order) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            w.close()
        assert ("emptied", busy.rel) in order
        assert {("new", m.rel) for m in made} <= set(order)
        assert order[0] == ("emptied", busy.rel), order

    asyncio.run(run())


def test_a_child_made_in_the_same_batch_is_known_when_the_parent_empties(
        cgroups: CgroupFactory) -> None:
    """A plain cgroup with children mirrors them (no final read of its own): the batch's
    IN_CREATE of a child counts before the parent's `populated 0` is handled."""
    parent = cgroups.create("parent")
    proc = parent.spawn(["sleep", "60"])
    seen: list[tuple[str, bool]] = []

    async def run() -> None:
        w = CgroupWatcher(cgroups.layout, identify)
        w.follow_new = True
        w.on_emptied = lambda cg: seen.append((cg.path, cg.has_children))
        w.start(asyncio.get_running_loop())
        try:
            cg = w.watch(identify(parent.rel, parent.ref_dir.stat().st_ino), new=False)
            assert cg is not None and not cg.has_children
            time.sleep(0.4)  # past the young cgroup's polling
            with w.lock:
                parent.child("kid")
                proc.kill()
                proc.wait()
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while not any(p == parent.rel for p, _ in seen) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            w.close()
        assert (parent.rel, True) in seen, seen

    asyncio.run(run())


def test_a_task_that_came_between_the_first_look_s_two_reads_is_a_start(
        cgroups: CgroupFactory) -> None:
    """A new cgroup's first look read `populated 0`, and a task came in before the CPU counter
    was read: its start must not read as the end of a whole life (a final read asked for a
    running cgroup). cgroup.events is read again after the counter: the watch tells a start."""
    fresh = cgroups.create("fresh")
    emptied: list[str] = []

    async def run() -> None:
        w = CgroupWatcher(cgroups.layout, identify)
        w.on_emptied = lambda cg: emptied.append(cg.path)
        w.start(asyncio.get_running_loop(), watch_tree=False)
        try:
            cg = w.watch(identify(fresh.rel, fresh.ref_dir.stat().st_ino), new=True)
            assert cg is not None and cg.populated is False
            emptied.clear()
            fresh.spawn(["sleep", "60"])
            with w.lock:
                cg.populated = None  # as at its first look, which read `populated 0` ...
                w._set_populated(cg, False, notified=False)  # ... before the task came
            assert emptied == [] and cg.populated is True
            assert cg.at_empty is None or cg.at_empty.cpu is None \
                or not cg.at_empty.cpu.usage_usec
        finally:
            w.close()

    asyncio.run(run())
