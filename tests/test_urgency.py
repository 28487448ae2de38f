"""Urgent work goes first: CPU-bound loops wait while a final read or a kernel notice runs."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import agent.core.urgency as urgency_module
from agent.core.loop_selector import new_event_loop
from agent.core.urgency import Urgency
from agent.kernel.final_read import FinalReadThread
from agent.kernel.watch_thread import WatchThread
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory
from tests.support.tracked import track


def test_give_way_waits_for_the_end_of_urgent_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urgency_module, "GIVE_WAY_MAX_S", 10.0)
    u = Urgency()
    u.give_way()
    assert u.waits == 0 and not u.pending  # nothing urgent: no wait
    u.begin()
    u.begin()
    order: list[str] = []
    waiter = threading.Thread(target=lambda: (u.give_way(), order.append("gave way")))
    waiter.start()
    time.sleep(0.05)
    u.end()
    time.sleep(0.05)
    order.append("first ended")  # one of two still outstanding: still waiting
    u.end()
    waiter.join(5)
    assert order == ["first ended", "gave way"] and u.waits == 1 and not u.pending


def test_give_way_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urgency_module, "GIVE_WAY_MAX_S", 0.01)
    u = Urgency()
    u.begin()  # never ended (a stuck read): a loop is held up at most GIVE_WAY_MAX_S a check
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (u.give_way(), done.set()))
    waiter.start()
    assert done.wait(5) and u.pending


def test_background_loops_wait_while_the_event_loop_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real event loop with the agent's selector: a worker passing give_way() makes no
    progress while the loop runs a 200 ms step, and goes on when the loop sleeps again."""
    monkeypatch.setattr(urgency_module, "LOOP_GIVE_WAY_MAX_S", 10.0)
    u = Urgency()
    loop = new_event_loop(u)
    passed: list[float] = []  # when the worker got past a give_way()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            u.give_way()
            passed.append(time.monotonic())
            time.sleep(0.001)
    step: list[float] = []

    async def main() -> None:
        await asyncio.sleep(0.1)  # the loop sleeps: the worker runs
        step.append(time.monotonic())
        while time.monotonic() - step[0] < 0.2:  # one step of CPU work, as a render would be
            pass
        step.append(time.monotonic())
        await asyncio.sleep(0.1)
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        loop.run_until_complete(main())
    finally:
        stop.set()
        thread.join(5)
        loop.close()
    begin, end = step
    # One pass may finish just after the step began (it was past its check already).
    assert len([t for t in passed if begin + 0.02 < t < end]) == 0
    assert [t for t in passed if t < begin] and [t for t in passed if t > end]
    assert u.loop_waits >= 1 and not u.loop_busy  # a closed loop holds nothing up


def test_waiting_for_the_event_loop_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urgency_module, "LOOP_GIVE_WAY_MAX_S", 0.01)
    u = Urgency()
    u.loop_woke()  # a loop that never sleeps again (overloaded): each check waits at most that
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (u.give_way(), done.set()))
    waiter.start()
    assert done.wait(5) and u.loop_waits == 1


def test_a_loop_that_never_sleeps_takes_only_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm of requests: a thread waits for the event loop at most LOOP_GIVE_WAY_SHARE of
    each second, so a cycle still ends (and /healthz and the watchdog stay good)."""
    monkeypatch.setattr(urgency_module, "LOOP_GIVE_WAY_MAX_S", 0.01)
    u = Urgency()
    u.loop_woke()  # and never asleep again
    items = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        u.give_way()
        items += 1
    # 2 s: two shares of 0.25 s in waits of 0.01 s (a third second may just begin).
    assert 40 <= u.loop_waits <= 80
    assert items > 10 * u.loop_waits  # outside the share, items go on without waiting


class _FailingFor(CgroupReader):
    """A real reader whose read of one path raises (an unexpected failure, injected)."""

    def __init__(self, factory: CgroupFactory, broken: str) -> None:
        super().__init__(factory.layout)
        self.broken = broken

    def read(self, path: str, *, member_pid: int | None = None,
             in_pass: bool = False) -> CgroupSample:
        if path == self.broken:
            raise RuntimeError("injected")
        return super().read(path, member_pid=member_pid, in_pass=in_pass)


@pytest.mark.root
def test_final_reads_are_urgent_until_read(cgroups: CgroupFactory) -> None:
    cg, broken = cgroups.create(), cgroups.create()
    u = Urgency()
    reader = track(_FailingFor(cgroups, broken.rel))
    reads = FinalReadThread(reader, u)
    got: list[CgroupSample] = []
    delivered = threading.Event()
    seen_pending: list[bool] = []
    try:
        # Queued behind a read that holds the reader's lock: urgent while they wait.
        with reader._lock:
            reads.submit(broken.rel, time.monotonic_ns(), got.append)
            reads.submit(cg.rel, time.monotonic_ns(),
                         lambda s: (got.append(s), delivered.set()))
            seen_pending.append(u.pending)
        assert delivered.wait(5)
        assert seen_pending == [True]
        assert [s.path for s in got] == [cg.rel] and got[0].cpu is not None
        assert not u.pending and u._outstanding == 0  # the failed read ended its urgency too
    finally:
        reads.close()


def test_kernel_notices_are_handled_as_urgent() -> None:
    watch = WatchThread()
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    seen: list[bool] = []
    handled = threading.Event()

    def handler() -> None:
        os.eventfd_read(fd)
        seen.append(watch._urgency.pending)
        handled.set()
    watch.add(fd, handler)
    watch.start()
    try:
        os.eventfd_write(fd, 1)
        assert handled.wait(5)
        assert seen == [True]
        deadline = time.monotonic() + 5
        while watch._urgency.pending and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not watch._urgency.pending
    finally:
        watch.close()
        os.close(fd)
