"""The end of a life the kernel watch never followed: made and removed before it looked.

Two sources may know it. The final-read process looks at each new directory the moment its
IN_CREATE comes and reads the end of a life it sees (a whole sample: CPU, memory, IO, pids).
The rmdir probe keeps, by inode, the CPU counter at the cgroup's rmdir (CPU only). The whole
read is the final unless the rmdir's counter is above it: then the cgroup ran again after the
read, and only the rmdir's counter is the last.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.events.rmdir_final import RmdirFinals
from agent.kernel.final_reads import FinalReads
from collectors.samples import CgroupSample


def _usage(sample: CgroupSample) -> int:
    return (sample.cpu.usage_usec or 0) if sample.cpu is not None else 0


def unseen_end(path: str, reads: FinalReads | None, rmdir: RmdirFinals,
               unknown: Callable[[int], bool]) -> tuple[CgroupSample, bool] | None:
    """The final sample of the life last at `path`, and whether it is partial (CPU only); None
    while neither source has one of an incarnation `unknown` accepts (one the watch followed
    is told by its own watch). Whatever is returned was taken from its source: once only."""
    whole = reads.take_early(path, unknown) if reads is not None else None
    if whole is not None:
        assert whole.inode is not None  # take_early hands only reads with an inode
        inode = whole.inode  # that `unknown` accepted
    else:
        last = rmdir.id_by_path(path)
        if last is None or not unknown(last):
            return None
        inode = last
    at_rmdir = rmdir.take(path, inode)
    if whole is not None and (at_rmdir is None or _usage(at_rmdir) <= _usage(whole)):
        return whole, False
    return (at_rmdir, True) if at_rmdir is not None else None
