"""Where final reads are done: a process of their own where it starts, else a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from agent.kernel.final_read import FinalReadThread, LatencyHistogram
from agent.kernel.final_read_process import FinalReadProcess
from collectors.cgroupfs import CgroupReader
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample

log = logging.getLogger("agent.kernel.final_read")


class FinalReads(Protocol):
    latency: LatencyHistogram

    @property
    def reader(self) -> CgroupReader: ...

    def submit(self, path: str, notified_ns: int, deliver: Callable[[CgroupSample], None],
               at_empty: CgroupSample | None = None) -> None:
        """Read `path`'s final sample and hand it to `deliver` (in another thread).
        `at_empty`: the CPU counter the watch read when it saw the cgroup empty."""

    def take_early(self, path: str, unknown: Callable[[int], bool]) -> CgroupSample | None:
        """The final-read process's own read of the last end at `path`, kept and not handed
        over, of an incarnation (inode) that `unknown` accepts; taken once. For a life the
        watch never followed (removed before it looked). None where reads run in the agent."""

    def alive(self) -> bool: ...

    def read_counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def start_final_reads(layout: CgroupLayout, reader: CgroupReader,
                      own_process: bool, realtime: bool,
                      inotify_fd: int | None = None) -> FinalReads:
    """FinalReadProcess when `own_process` and it starts, else FinalReadThread (said why).
    `realtime`: the process at SCHED_FIFO; `inotify_fd`: the kernel watch's, for the process
    to read and forward (CgroupWatcher.forward_inotify)."""
    thread = FinalReadThread(reader)
    if not own_process:
        return thread
    try:
        return FinalReadProcess(layout, thread, realtime, inotify_fd)
    except OSError as e:
        log.warning("final-read process not started (%s): final reads are done in the agent",
                    e)
        return thread
