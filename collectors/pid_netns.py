"""Which network namespace each process is in, without a stat per process per scan.

A process's namespace is stat'ed when the process is first seen; later scans take it from the
cache while /proc/<pid> keeps its inode (a pid reused by a new process gets a new /proc inode,
which the directory listing gives for free). A process can still move itself (setns, unshare):
every `recheck_every` scans every process is stat'ed again, so such a move shows within that
many scans; the namespace's counters are cumulative, so nothing is lost meanwhile unless the
namespace is gone before then.
"""

from __future__ import annotations

import os
from pathlib import Path

#: (st_dev, st_ino) of a namespace's nsfs inode.
NetnsKey = tuple[int, int]


def stat_key(path: str) -> NetnsKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone, or not ours to read (EACCES)
    return (st.st_dev, st.st_ino)


class PidNetns:
    def __init__(self, recheck_every: int = 10) -> None:
        self.recheck_every = recheck_every
        #: pid -> (/proc/<pid> inode, its namespace)
        self._known: dict[int, tuple[int, NetnsKey]] = {}
        self._scans = 0
        #: Namespace stats done by the last scan (for tests and the benchmark).
        self.stats = 0

    def scan(self, proc_root: Path) -> dict[NetnsKey, list[int]]:
        """Namespace -> its processes' pids (ascending)."""
        self._scans += 1
        recheck = self.recheck_every <= 1 or self._scans % self.recheck_every == 0
        try:
            with os.scandir(proc_root) as it:
                entries = sorted((int(e.name), e.inode()) for e in it if e.name.isdigit())
        except FileNotFoundError:
            entries = []
        known = self._known
        now: dict[int, tuple[int, NetnsKey]] = {}
        pids: dict[NetnsKey, list[int]] = {}
        base = str(proc_root)
        stats = 0
        for pid, ino in entries:
            hit = known.get(pid)
            if hit is not None and hit[0] == ino and not recheck:
                key = hit[1]
            else:
                stats += 1
                found = stat_key(f"{base}/{pid}/ns/net")
                if found is None:
                    continue
                key = found
            now[pid] = (ino, key)
            pids.setdefault(key, []).append(pid)
        self._known = now
        self.stats = stats
        return pids
