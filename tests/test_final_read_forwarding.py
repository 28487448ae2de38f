"""The final-read process reads the kernel watch's inotify fd (agent.kernel.forwarded_inotify):
a `populated 0` is read there at once, whatever the agent's watch thread is doing, and the watch
still sees every notice. Real cgroups, the real watch and the real child process."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

from agent.events.lifecycle import identify
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.final_read import FinalReadThread
from agent.kernel.final_read_process import FinalReadProcess
from agent.kernel.watched import WatchedCgroup
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
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
        proc.submit(cg.path, cg.notified_ns, finals.deliver_for(cg.path))  # type: ignore[arg-type]

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


def test_the_process_reads_a_populated_0_while_the_watch_thread_is_held(
        cgroups: CgroupFactory) -> None:
    """The agent's watch thread is held off with its lock; the process still reads the final
    sample at once (before the lock is let go), and it is the kernel's last counter."""
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
                let_go_ns = time.monotonic_ns()
            sample = await asyncio.to_thread(finals.wait, busy.rel, killed_ns)
            return proc.early_reads, let_go_ns, sample, busy.cpu_usage_usec()
        finally:
            w.close()
            proc.close()

    early, let_go_ns, sample, usage = asyncio.run(run())
    assert early == 1
    assert sample.monotonic_ns < let_go_ns, "read only after the watch thread went on"
    assert sample.populated is False
    assert sample.cpu is not None and sample.cpu.usage_usec == usage


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
            sample, usage = await life(w, "after-death")
            assert proc.early_reads == 1
            assert sample.cpu is not None and sample.cpu.usage_usec == usage
        finally:
            w.close()
            proc.close()

    asyncio.run(run())
