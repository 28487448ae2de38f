"""The final-read process's side of forwarding (agent.kernel.final_read_notices), in this
process: a real inotify instance on real cgroups, and what it would send to the agent."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from agent.kernel.final_read_notices import YOUNG_FOR_NS, Forwarding
from agent.kernel.final_read_wire import (
    FORWARD,
    EarlyRead,
    decode_frame,
    result_frames,
    unpack_read,
)
from collectors.cgroupfs import CgroupReader
from collectors.inotify import IN_CREATE, IN_DELETE, IN_ISDIR, IN_MODIFY, Inotify, inotify_events
from tests.support.cgroups import CgroupFactory, TestCgroup

#: The tests' kept cgroup.events fds (closed by the fixture below).
cgroups_kept: list[int] = []


@pytest.fixture(autouse=True)
def _close_kept() -> Iterator[None]:
    yield
    while cgroups_kept:
        os.close(cgroups_kept.pop())


class Sent:
    def __init__(self) -> None:
        self.frames: list[tuple[bytes, dict[str, EarlyRead]]] = []

    def __call__(self, data: bytes) -> None:
        for _, body in result_frames().feed(data):
            frame = decode_frame(body)
            assert frame[0] == FORWARD
            assert isinstance(frame[1], bytes) and isinstance(frame[2], dict)
            self.frames.append((frame[1], {p: unpack_read(r) for p, r in frame[2].items()}))


def _until(what: str, check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def _setup(cgroups: CgroupFactory, cg: TestCgroup) -> tuple[Inotify, Forwarding, Sent, int]:
    """The agent's part: the directory watched, its cgroup.events kept open (kernfs notifies
    only files whose inode is in memory), the watch descriptor told."""
    assert cgroups.layout.unified is not None
    ino = Inotify()
    kept = os.open(cg.ref_dir / "cgroup.events", os.O_RDONLY)
    cgroups_kept.append(kept)
    wd = ino.add_watch(str(cg.ref_dir), IN_MODIFY | IN_CREATE | IN_DELETE)
    sent = Sent()
    fwd = Forwarding(CgroupReader(cgroups.layout, max_open_dirs=0), cgroups.layout.unified,
                     ino.fd, sent)
    fwd.tell(wd, cg.rel)
    return ino, fwd, sent, wd


def test_an_end_the_young_poll_finds_goes_as_a_notice_with_its_read(
        cgroups: CgroupFactory) -> None:
    """After the notice of `populated 1`, the end is found by polling alone (the inotify fd
    is not read again), and sent as a notice of the cgroup's watch with its final read."""
    cg = cgroups.create("young")
    ino, fwd, sent, wd = _setup(cgroups, cg)
    try:
        burner = cg.burn()
        _until("populated 1 noticed", lambda: (fwd.forward(), bool(fwd.young))[1])
        assert list(fwd.young) == [cg.rel]
        time.sleep(0.05)
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        # (The frames before: the notices of the start, one or two reads of the fd.)
        _until("the end polled",
               lambda: (fwd.poll_young(), any(cg.rel in e for _, e in sent.frames))[1])
        data, early = sent.frames[-1]
        assert [(e.wd, e.mask, e.name) for e in inotify_events(data)] == \
            [(wd, IN_MODIFY, "cgroup.events")]
        _notified, _finished, sample = early[cg.rel]
        assert sample.populated is False
        assert sample.cpu is not None and sample.cpu.usage_usec == cg.cpu_usage_usec()
        assert fwd.young == {}  # its fd closed with it
        # The kernel's own notice of that end comes after: forwarded, not read a second time.
        _until("the kernel's notice", lambda: ino.pending())
        fwd.forward()
        data, early = sent.frames[-1]
        assert any(e.wd == wd for e in inotify_events(data)) and early == {}
    finally:
        ino.close()


def test_a_notice_of_populated_0_is_read_at_once_and_forwarded_as_it_came(
        cgroups: CgroupFactory) -> None:
    cg = cgroups.create("notice")
    ino, fwd, sent, wd = _setup(cgroups, cg)
    try:
        burner = cg.burn()
        _until("populated 1 noticed", lambda: (fwd.forward(), bool(fwd.young))[1])
        assert all(early == {} for _, early in sent.frames)
        time.sleep(0.3)
        fwd._forget_young(cg.rel)
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        _until("populated 0 noticed", lambda: ino.pending())
        fwd.forward()
        data, early = sent.frames[-1]
        assert any(e.wd == wd and e.name == "cgroup.events" for e in inotify_events(data))
        sample = early[cg.rel][2]
        assert sample.populated is False
        assert sample.cpu is not None and sample.cpu.usage_usec == cg.cpu_usage_usec()
    finally:
        ino.close()


def _ended_life(cg: TestCgroup) -> None:
    """A short life in `cg`, over when this returns (the burner exited, the cgroup empty)."""
    cg.burn(0.05).wait()
    _until("emptied", lambda: "populated 0" in cg.read(cg.factory.ref_key, "cgroup.events"))


def test_a_directory_made_is_looked_at_once_and_a_life_already_over_is_read(
        cgroups: CgroupFactory) -> None:
    """A cgroup made, filled and emptied before the process reads the IN_CREATE: its final
    read goes with the IN_CREATE's bytes (the agent, which has not looked yet, finds it when
    its look asks), and it is the kernel's last counter."""
    parent = cgroups.create("parent")
    ino, fwd, sent, wd = _setup(cgroups, parent)
    try:
        child = parent.child("over")
        _ended_life(child)
        fwd.forward()
        data, early = sent.frames[-1]
        assert any(e.wd == wd and e.mask & IN_CREATE and e.mask & IN_ISDIR
                   and e.name == "over" for e in inotify_events(data))
        sample = early[child.rel][2]
        assert sample.populated is False
        assert sample.cpu is not None and sample.cpu.usage_usec == child.cpu_usage_usec() > 0
        assert fwd.young == {} and child.rel in fwd.ended
        # The agent's request for that end is answered with this read, while no task ran.
        assert fwd.done_read(child.rel) == early[child.rel]
        _ended_life(child)
        assert fwd.done_read(child.rel) is None
        # Its removal forgets it.
        for d in child.dirs.values():
            d.rmdir()
        cgroups.created.remove(child)
        _until("IN_DELETE", lambda: ino.pending())
        fwd.forward()
        assert child.rel not in fwd.ended
    finally:
        ino.close()


def test_a_directory_made_empty_is_young_and_its_end_goes_with_its_read(
        cgroups: CgroupFactory) -> None:
    """Made and not filled yet: polled; the life that comes is read at its end, found by the
    poll, and sent without a notice (its directory watch is not told: the agent's look asks)."""
    parent = cgroups.create("parent")
    ino, fwd, sent, _wd = _setup(cgroups, parent)
    try:
        child = parent.child("later")
        fwd.forward()
        assert list(fwd.young) == [child.rel] and not fwd.young[child.rel].filled
        assert sent.frames[-1][1] == {}  # nothing ran: nothing read
        burner = child.burn()
        _until("filled", lambda: (fwd.poll_young(), fwd.young[child.rel].filled)[1])
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        _until("the end polled", lambda: (fwd.poll_young(), child.rel not in fwd.young)[1])
        data, early = sent.frames[-1]
        assert data == b""
        sample = early[child.rel][2]
        assert sample.cpu is not None and sample.cpu.usage_usec == child.cpu_usage_usec()
    finally:
        ino.close()


def test_a_young_directory_not_told_yet_is_polled_until_told_and_its_fill_restarts_the_time(
        cgroups: CgroupFactory) -> None:
    """Made empty while the agent's watch is busy: its notices cannot reach the process, so it
    stays young past YOUNG_FOR_NS until its watch is told; from the tell, and from its fill,
    it has YOUNG_FOR_NS more (a life filled late is still read at its end)."""
    parent = cgroups.create("parent")
    ino, fwd, sent, _wd = _setup(cgroups, parent)
    young_s = YOUNG_FOR_NS / 1e9
    try:
        untold, told = parent.child("untold"), parent.child("told")
        fwd.forward()
        assert set(fwd.young) == {untold.rel, told.rel}
        fwd.tell(ino.add_watch(str(told.ref_dir), IN_MODIFY | IN_CREATE | IN_DELETE), told.rel)
        time.sleep(young_s * 1.2)
        fwd.poll_young()
        assert list(fwd.young) == [untold.rel]  # the told one's fill will be a notice
        fwd.tell(ino.add_watch(str(untold.ref_dir), IN_MODIFY | IN_CREATE | IN_DELETE),
                 untold.rel)
        time.sleep(young_s * 0.3)
        burner = untold.burn()
        _until("filled", lambda: (fwd.poll_young(), fwd.young[untold.rel].filled)[1])
        time.sleep(young_s * 0.8)  # past the tell's YOUNG_FOR_NS, not past the fill's
        fwd.poll_young()
        assert untold.rel in fwd.young
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        _until("the end polled", lambda: (fwd.poll_young(), untold.rel not in fwd.young)[1])
        sample = sent.frames[-1][1][untold.rel][2]
        assert sample.cpu is not None and sample.cpu.usage_usec == untold.cpu_usage_usec()
    finally:
        ino.close()


def test_a_read_whose_cpu_counter_moved_since_is_read_again(cgroups: CgroupFactory) -> None:
    """The settle: the counter is checked after a sleep; one that moved since the read (here
    a task still running, charged at its ticks, as an exiting task's last slice is at its final
    switch) means the read is done again."""
    cg = cgroups.create("moving")
    ino, fwd, _sent, _wd = _setup(cgroups, cg)
    try:
        cg.burn()
        time.sleep(0.05)
        early: dict[str, EarlyRead] = {}
        fwd._read(cg.rel, 1, early)
        first = early[cg.rel][2]
        time.sleep(0.03)  # a few ticks: the running task's CPU is charged
        fwd._settle(early)
        again = early[cg.rel][2]
        assert first.cpu is not None and again.cpu is not None
        assert again.cpu.usage_usec is not None and first.cpu.usage_usec is not None
        assert again.cpu.usage_usec > first.cpu.usage_usec
        assert early[cg.rel][0] == 1  # still timed from its notice
    finally:
        ino.close()


def test_a_map_told_again_keeps_only_what_it_names(cgroups: CgroupFactory) -> None:
    """A directory left out of a map told again is forgotten whole (its wd, its young poll and
    the fd of that poll); a path told again with a new wd keeps only the new one."""
    kept, left_out = cgroups.create("kept"), cgroups.create("left-out")
    ino, fwd, _sent, wd = _setup(cgroups, kept)
    try:
        cgroups_kept.append(os.open(left_out.ref_dir / "cgroup.events", os.O_RDONLY))
        other = ino.add_watch(str(left_out.ref_dir), IN_MODIFY | IN_CREATE | IN_DELETE)
        fwd.tell(other, left_out.rel)
        burner = left_out.burn()
        _until("populated 1 noticed", lambda: (fwd.forward(), left_out.rel in fwd.young)[1])
        young_fd = fwd.young[left_out.rel].fd
        fwd.begin_reset()
        fwd.tell(wd + 1000, kept.rel)  # the same directory under another wd (a new watch)
        fwd.end_reset()
        assert fwd.dirs == {wd + 1000: kept.rel} and fwd.wds == {kept.rel: wd + 1000}
        assert fwd.young == {}
        with pytest.raises(OSError):
            os.fstat(young_fd)  # closed with it
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
    finally:
        ino.close()
