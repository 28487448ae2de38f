"""The final-read process's side of forwarding (agent.kernel.final_read_notices), in this
process: a real inotify instance on real cgroups, and what it would send to the agent."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from agent.kernel.final_read_notices import Forwarding
from agent.kernel.final_read_wire import FORWARD, EarlyRead, decode_frame, result_frames
from collectors.cgroupfs import CgroupReader
from collectors.inotify import IN_MODIFY, Inotify, inotify_events
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
            self.frames.append((frame[1], frame[2]))


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
    wd = ino.add_watch(str(cg.ref_dir), IN_MODIFY)
    sent = Sent()
    fwd = Forwarding(CgroupReader(cgroups.layout, max_open_dirs=0), cgroups.layout.unified,
                     ino.fd, sent)
    fwd.dirs[wd] = cg.rel
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
        assert list(fwd.young) == [wd]
        time.sleep(0.05)
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()
        _until("the end polled", lambda: (fwd.poll_young(), bool(sent.frames[1:]))[1])
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
        fwd._forget_young(wd)
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
