"""A v1 OOM eventfd attached for a cgroup that is removed before its first read: the read finds
it gone and closes the fds, so the eventfd must already be waited on (and then is let go), not
registered after the close, when its number may be another thread's new file."""

from __future__ import annotations

import os

import pytest

from agent.events.lifecycle import identify
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.kernfs import oom_eventfd
from agent.kernel.watched import WatchedCgroup
from tests.support.cgroups import CgroupFactory

pytestmark = pytest.mark.root


def test_an_oom_eventfd_of_a_cgroup_gone_before_its_first_read_is_let_go(
        cgroups: CgroupFactory) -> None:
    if cgroups.layout.v1_root("memory") is None:
        pytest.fail("this test needs a v1 memory hierarchy (hybrid or legacy host)")
    watcher = CgroupWatcher(cgroups.layout, identify)
    try:
        t = cgroups.create()
        ino = t.ref_dir.stat().st_ino
        cg = WatchedCgroup(t.rel, ino, identify(t.rel, ino), new=True)
        watcher.cgroups[t.rel] = cg
        control = f"{t.dir('memory')}/memory.oom_control"
        fds = oom_eventfd(control)
        assert fds is not None and watcher.fd_budget.take(2, "v1 OOM eventfd")
        held = watcher.fd_budget.held
        t.remove()
        with watcher.lock:
            watcher._attach_oom(cg, fds, control)
        assert cg.oom_fds is None
        assert fds[0] not in watcher._thread._handlers
        assert watcher.fd_budget.held == held - 2
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        watcher.close()
