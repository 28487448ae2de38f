"""The final-read process reads the kernel watch's inotify fd (agent.kernel.forwarded_inotify):
a `populated 0` is read there at once, whatever the agent's watch thread is doing, and the watch
still sees every notice. Real cgroups, the real watch and the real child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace

import pytest

from agent.events.lifecycle import identify
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.final_read import FinalReadThread
from agent.kernel.final_read_process import EARLY_KEEP_NS, FinalReadProcess
from agent.kernel.final_read_wire import RESULT, decode_frame, encode_forward, pack_read
from agent.kernel.watched import WatchedCgroup
from collectors.cgroupfs import CgroupReader
from collectors.inotify import IN_Q_OVERFLOW, Inotify, InotifyEvent
from collectors.samples import CgroupSample, CpuSample
from tests.support.cgroups import CgroupFactory, TestCgroup


class Finals:
    """The final samples delivered, by path (the results thread or the watch thread call)."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[CgroupSample]] = {}
        self.done = threading.Condition()

    def deliver_for(self, path: str) -> object:
        def deliver(sample: CgroupSample) -> None:
            with self.done:
                self.by_path.setdefault(path, []).append(sample)
                self.done.notify_all()
        return deliver

    def wait(self, path: str, after_ns: int, timeout: float = 10.0) -> CgroupSample:
        """The first final sample of `path` read after `after_ns` (a new cgroup found empty
        by the watch has a read too, from before its life)."""
        def after() -> list[CgroupSample]:
            return [s for s in self.by_path.get(path, ()) if s.monotonic_ns > after_ns]

        with self.done:
            assert self.done.wait_for(after, timeout), self.by_path
            return after()[0]


async def _forwarding(cgroups: CgroupFactory, finals: Finals
                      ) -> tuple[CgroupWatcher, FinalReadProcess]:
    w = CgroupWatcher(cgroups.layout, identify)
    w.follow_new = True
    proc = FinalReadProcess(cgroups.layout, FinalReadThread(CgroupReader(cgroups.layout)),
                            realtime=False, inotify_fd=w.ino.fd)

    def emptied(cg: WatchedCgroup) -> None:
        proc.submit(cg.path, cg.notified_ns, finals.deliver_for(cg.path),  # type: ignore[arg-type]
                    cg.at_empty)

    w.on_emptied = emptied
    w.start(asyncio.get_running_loop())
    assert w.forward_inotify(proc)
    return w, proc


def _emptied(cg: TestCgroup, ref_key: str) -> None:
    deadline = time.monotonic() + 5
    while "populated 0" not in cg.read(ref_key, "cgroup.events"):
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _watched(w: CgroupWatcher, rel: str) -> WatchedCgroup:
    deadline = time.monotonic() + 5
    while (cg := w.cgroups.get(rel)) is None or cg.populated is not True:
        assert time.monotonic() < deadline, rel
        time.sleep(0.01)
    return cg


def _read_by_the_process_while_held(early: int, let_go_ns: int, sample: CgroupSample,
                                    usage: int) -> None:
    """One final read, handed over from the process, done before the watch thread was let
    go, and the kernel's last counter."""
    assert early == 1
    assert sample.monotonic_ns < let_go_ns, "read only after the watch thread went on"
    assert sample.populated is False
    assert sample.cpu is not None and sample.cpu.usage_usec == usage > 0


@pytest.mark.parametrize("removed", [False, True])
def test_the_process_reads_a_populated_0_while_the_watch_thread_is_held(
        cgroups: CgroupFactory, removed: bool) -> None:
    """The agent's watch thread is held off with its lock; the process still reads the final
    sample at once (before the lock is let go), and it is the kernel's last counter.
    `removed`: the cgroup is removed before the watch reads the notice, which then finds it
    gone; its end is still the process's read."""
    assert cgroups.layout.unified is not None, "forwarding is for cgroup2"
    busy = cgroups.create("busy")
    burner = busy.burn()
    finals = Finals()

    async def run() -> tuple[int, int, CgroupSample, int]:
        w, proc = await _forwarding(cgroups, finals)
        try:
            w.watch(identify(busy.rel, busy.ref_dir.stat().st_ino), new=False)
            time.sleep(0.4)  # past the young cgroup's polling: only the notice tells
            with w.lock:
                killed_ns = time.monotonic_ns()
                os.kill(burner.pid, signal.SIGKILL)
                burner.wait()
                _emptied(busy, cgroups.ref_key)
                time.sleep(0.1)  # the notice reaches inotify, and the process
                usage = busy.cpu_usage_usec()
                if removed:
                    busy.remove()
                let_go_ns = time.monotonic_ns()
            sample = await asyncio.to_thread(finals.wait, busy.rel, killed_ns)
            return proc.early_reads, let_go_ns, sample, usage
        finally:
            w.close()
            proc.close()

    _read_by_the_process_while_held(*asyncio.run(run()))


def test_cgroups_made_after_the_start_are_read_by_the_process_and_a_death_gives_the_fd_back(
        cgroups: CgroupFactory) -> None:
    assert cgroups.layout.unified is not None, "forwarding is for cgroup2"
    finals = Finals()

    async def life(w: CgroupWatcher, name: str) -> tuple[CgroupSample, int]:
        cg = cgroups.create(name)
        burner = cg.burn()
        await asyncio.to_thread(_watched, w, cg.rel)
        await asyncio.sleep(0.4)  # past the young cgroup's polling
        killed_ns = time.monotonic_ns()
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        sample = await asyncio.to_thread(finals.wait, cg.rel, killed_ns)
        return sample, cg.cpu_usage_usec()

    async def run() -> None:
        w, proc = await _forwarding(cgroups, finals)
        try:
            sample, usage = await life(w, "made-after")
            assert proc.early_reads == 1 and proc.dirs_untold == 0
            assert sample.cpu is not None and sample.cpu.usage_usec == usage
            os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while w._forwarded is not None:
                assert time.monotonic() < deadline, "the watch never read its fd again"
                await asyncio.sleep(0.01)
            # The watch reads the fd itself: a cgroup made now is still seen, and its end
            # read in the agent (the process is gone).
            fallback_reads = proc.fallback.reads
            sample, usage = await life(w, "after-death")
            # Read by the agent's own reader; nothing of it came from the process. (Not
            # early_reads == 1: the test prefix, which this test's watch does not follow, ends
            # with made-after; when its cgroup.events inode happens to be in memory the process
            # reads that end too, and the rescan after the death, which follows the prefix from
            # then on, takes it: a second early read, of another cgroup. Reproduced by holding
            # the prefix's cgroup.events open: 2, with the prefix in the process's reads.)
            assert proc.fallback.reads > fallback_reads and sample.path not in proc._early
            assert sample.cpu is not None and sample.cpu.usage_usec == usage
        finally:
            w.close()
            proc.close()

    asyncio.run(run())


@pytest.mark.parametrize("process", ["stopped", "running"])
def test_a_life_over_before_the_watch_looked_is_read_by_the_process(
        cgroups: CgroupFactory, process: str) -> None:
    """A cgroup made, filled and emptied while the watch thread is held off: its end is read
    by the process, at its look at the new directory (`stopped`: the process reads the
    IN_CREATE only after the life) or by its poll of the young cgroup (`running`: held over
    until the watch's own look finds it empty and asks), and it is the kernel's last counter."""
    assert cgroups.layout.unified is not None, "forwarding is for cgroup2"
    finals = Finals()

    async def run() -> tuple[int, int, CgroupSample, int]:
        w, proc = await _forwarding(cgroups, finals)
        try:
            with w.lock:
                if process == "stopped":
                    os.kill(proc.pid, signal.SIGSTOP)
                cg = cgroups.create("over-unseen")
                cg.burn(0.05).wait()
                _emptied(cg, cgroups.ref_key)
                if process == "stopped":
                    os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.1)  # the process reads the IN_CREATE (and polls)
                let_go_ns = time.monotonic_ns()
            sample = await asyncio.to_thread(finals.wait, cg.rel, 0)
            return proc.early_reads, let_go_ns, sample, cg.cpu_usage_usec()
        finally:
            w.close()
            proc.close()

    _read_by_the_process_while_held(*asyncio.run(run()))


@contextlib.contextmanager
def _forwarding_process(cgroups: CgroupFactory, name: str
                        ) -> Iterator[tuple[FinalReadProcess, CgroupSample]]:
    """A forwarding final-read process (told of no directory), and the sample of an emptied
    cgroup, read in the test."""
    assert cgroups.layout.unified is not None, "forwarding is for cgroup2"
    cg = cgroups.create(name)
    cg.burn(0.02).wait()
    _emptied(cg, cgroups.ref_key)
    reader = CgroupReader(cgroups.layout)
    ino = Inotify()
    proc = FinalReadProcess(cgroups.layout, FinalReadThread(reader), realtime=False,
                            inotify_fd=ino.fd)
    try:
        assert proc.start_forwarding({}, lambda: None)
        yield proc, reader.read(cg.rel)
    finally:
        proc.close()
        ino.close()


def test_a_read_held_over_is_taken_only_for_the_life_it_read(cgroups: CgroupFactory) -> None:
    """A read the process sent before the watch asked is handed over only when the watch's
    counter at empty shows no task ran since (same inode, CPU not above the read's), and
    only for EARLY_KEEP_NS; else the watch's request is read anew. (The process is told
    nothing of `held`: it reads anew when asked.)"""
    with _forwarding_process(cgroups, "held") as (proc, held):
        assert held.cpu is not None and held.cpu.usage_usec is not None and held.inode
        now = time.monotonic_ns()

        def at_empty(inode: int, usage: int) -> CgroupSample:
            return replace(held, inode=inode, cpu=CpuSample(usage_usec=usage))

        def ask(seen: CgroupSample) -> CgroupSample:
            """The sample delivered for one request (handed over, or read by the process)."""
            got: queue.SimpleQueue[CgroupSample] = queue.SimpleQueue()
            proc.submit(held.path, time.monotonic_ns(), got.put, seen)
            return got.get(timeout=10)

        # Process -> agent, as a read its poll found with no notice to go with it.
        proc._forwarded(b"", {held.path: pack_read((now, now, held))})
        usage = held.cpu.usage_usec
        assert ask(at_empty(held.inode, usage + 1)) != held  # a later life: read anew
        assert ask(at_empty(held.inode + 1, usage)) != held  # another cgroup at the path
        assert proc.early_reads == 0 and proc.answered == 2
        assert ask(at_empty(held.inode, usage)) == held
        assert proc.early_reads == 1
        # Asked again for the same end (the kernel's later notice): the same read, counted once.
        assert ask(at_empty(held.inode, usage)) == held
        assert proc.early_reads == 1 and proc.answered == 2
        # Kept EARLY_KEEP_NS: an older one is let go when the next reads come.
        old = now - EARLY_KEEP_NS - 1
        proc._forwarded(b"", {held.path: pack_read((old, old, held))})
        proc._forwarded(b"", {"/another": pack_read((now, now, held))})
        assert ask(at_empty(held.inode, usage)) != held
        assert proc.early_reads == 1


def test_the_reads_held_for_the_watch_are_kept_packed(cgroups: CgroupFactory) -> None:
    """The agent keeps each of the process's reads for EARLY_KEEP_NS: at 50 lives a second,
    250 of them. As the pipe brings them (pickled) 1.6 KB each here; unpickled, with its
    memory.stat, 8.5 KB (2 MiB at that rate). Handed over, the sample is whole."""
    with _forwarding_process(cgroups, "packed") as (proc, sample):
        assert sample.memory is not None and len(sample.memory.stat) > 20
        now = time.monotonic_ns()
        frames = [encode_forward(b"", {f"{sample.path}-{i}": (now, now, sample)})
                  for i in range(250)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for frame in frames:
                forward = decode_frame(frame[RESULT.size:])  # as the results thread does
                assert isinstance(forward[2], dict)
                proc._forwarded(b"", forward[2])
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(proc._early) == 250
        assert kept / 250 < 2_500, f"{kept / 250:.0f} bytes kept per read"
        got: queue.SimpleQueue[CgroupSample] = queue.SimpleQueue()
        proc.submit(f"{sample.path}-7", time.monotonic_ns(), got.put, sample)
        handed = got.get(timeout=10)
        assert handed == sample and handed.memory is not None
        assert dict(handed.memory.stat) == dict(sample.memory.stat)
        assert proc.early_reads == 1 and proc.answered == 0


def test_a_map_told_again_forgets_what_it_leaves_out_and_an_overflow_tells_it_whole(
        cgroups: CgroupFactory) -> None:
    """After a queue overflow the watch tells the process its whole map of directory watches
    again, and the process forgets what the map leaves out (removals whose notices were lost:
    nothing of them may stay). Seen from the agent: an end in a directory the process does not
    know is not read early (it is read when the agent asks), one it knows is."""
    assert cgroups.layout.unified is not None, "forwarding is for cgroup2"
    finals = Finals()

    async def life(w: CgroupWatcher, proc: FinalReadProcess, cg: TestCgroup) -> bool:
        """One life of `cg`; whether the process read its end at the notice."""
        burner = cg.burn()
        await asyncio.to_thread(_watched, w, cg.rel)
        await asyncio.sleep(0.4)  # past the young cgroup's polling: only the notice tells
        killed_ns = time.monotonic_ns()
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        await asyncio.to_thread(finals.wait, cg.rel, killed_ns)
        early = proc._early.get(cg.rel)
        return early is not None and early[0][0] > killed_ns

    async def run() -> list[bool]:
        w, proc = await _forwarding(cgroups, finals)
        try:
            told, left_out = cgroups.create("told"), cgroups.create("left-out")
            read_early = [await life(w, proc, told), await life(w, proc, left_out)]
            with w.lock:
                dirs = {wd: path for wd, path in w._dir_wds.items() if path != left_out.rel}
            proc.reset_dirs(dirs)
            read_early += [await life(w, proc, left_out), await life(w, proc, told)]
            with w.lock:  # what the kernel's IN_Q_OVERFLOW does
                w._on_events([InotifyEvent(-1, IN_Q_OVERFLOW, 0, "")], time.monotonic_ns())
            read_early += [await life(w, proc, left_out)]
            return read_early
        finally:
            w.close()
            proc.close()

    assert asyncio.run(run()) == [True, True, False, True, True]
