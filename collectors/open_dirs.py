"""Cgroup directory fds and their files' fds kept open between collection cycles."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable

from collectors.cgroup_dir import CgroupDir


class OpenDirs:
    """Directory fds, and their files' fds, kept open between collection cycles, keyed by
    the directory's absolute path.

    Each cycle reads the same cgroups again; keeping their directories open saves an open
    (a full path walk) and a close per hierarchy and cgroup, keeping their files open saves
    an open and a close per file (kernfs answers a pread at offset 0 with fresh content).
    Bounded: at most `max_open` fds in all (directories and files) and SHARE of RLIMIT_NOFILE
    (the kernel watch keeps up to agent.kernel.fd_budget.SHARE more; the limit is
    re-read when full, since a daemon may raise it later), and after an EMFILE also net of
    the fds the rest of the process holds (see REGROW_AFTER_S); when full,
    directories and files are opened per read instead (evicting would thrash on cyclic scans).
    A kept cgroup file costs ~6 KB of kernel memory (its seq_file buffer), charged to the
    agent's cgroup: files read seldom (limits) are not kept.
    Entries unused for IDLE_S are closed, so removed cgroups are not kept pinned. A cached fd
    of a directory that was removed and created again is detected by its inode (callers
    compare) and replaced. Not thread-safe: CgroupReader serialises access.
    """

    #: Of the open-file limit, the share kept fds may take: a hybrid cgroup needs ~27 kept
    #: fds (6 directories and their counters): 500 fit in 0.7 of 20,000. The kernel watch
    #: takes 0.2 (agent.kernel.fd_budget), a tenth is left to the rest of the process.
    SHARE = 0.7
    IDLE_S = 120.0
    SWEEP_EVERY_S = 30.0
    #: After running out of fds (shrink), the pool grows again no sooner than this, and then
    #: only into the fds the rest of the process leaves free (counted at that moment): one
    #: EMFILE must not leave every later read opening its files (3x the CPU) for good.
    REGROW_AFTER_S = 60.0

    def __init__(
        self,
        max_open: int,
        on_keep: Callable[[str], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        """`on_keep(path)` / `on_drop(path)`: a directory starts / stops being kept."""
        self._max = max_open
        self._on_keep = on_keep
        self._on_drop = on_drop
        self._dirs: dict[str, CgroupDir] = {}
        #: Counts closed directories: fd numbers taken before are still theirs while it holds.
        self.generation = 0
        #: Fds kept: the directories' and their files'.
        self._n = 0
        self._cap = self._compute_cap()
        self._next_sweep = 0
        #: Set by shrink(): the cap then also leaves room for the fds others hold.
        self._squeezed = False
        self._regrow_ns = 0

    def _compute_cap(self, others: int = 0) -> int:
        """`others`: fds the rest of the process holds, left to it as well."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self._max
        return max(0, min(self._max, int(soft * self.SHARE) - others))

    def __len__(self) -> int:
        """Fds kept (directories and files)."""
        return self._n

    @property
    def dirs(self) -> int:
        return len(self._dirs)

    def take(self) -> bool:
        """Room for one more kept fd (counted as taken when True)."""
        if self._n < self._cap:
            self._n += 1
            return True
        return False

    def get(self, path: str, now_ns: int, ino: int | None = None) -> CgroupDir:
        """The directory, from the cache when its inode is still `ino` (None: not checked).
        Raises Vanished / OSError like CgroupDir()."""
        if now_ns >= self._next_sweep:
            self.sweep(now_ns)
        d = self._dirs.get(path)
        if d is not None:
            if ino is None or d.ino == ino:
                d.used_ns = now_ns
                d.missing = d.unsupported = d.fresh = d.emfile = False
                d.record = []
                return d
            self.drop(path)
        try:
            d = CgroupDir(path)
        except OSError as e:
            if e.errno != errno.EMFILE or not self.shrink(now_ns):
                raise
            d = CgroupDir(path)
        d.ino = os.fstat(d.fd).st_ino
        if self.take() or (self._recap(now_ns) and self.take()):
            d.owned = False  # closed by drop()
            d.used_ns = now_ns
            d.files = {}
            d.memos = {}
            d.pool = self
            d.record = []
            self._dirs[path] = d
            if self._on_keep is not None:
                self._on_keep(path)
        return d

    def kept(self, path: str, now_ns: int) -> CgroupDir | None:
        """The kept directory at `path`, or None (nothing is opened)."""
        d = self._dirs.get(path)
        if d is not None:
            d.used_ns = now_ns
            d.missing = d.unsupported = d.fresh = d.emfile = False
            d.record = None
        return d

    def _recap(self, now_ns: int) -> bool:
        """Full: read the limit again (a daemon may raise it later); after a shrink, at most
        every REGROW_AFTER_S and net of the fds the rest of the process holds."""
        if now_ns < self._regrow_ns:
            return False
        others = 0
        if self._squeezed:
            self._regrow_ns = now_ns + int(self.REGROW_AFTER_S * 1e9)
            others = max(0, open_fd_count() - self._n)
        self._cap = self._compute_cap(others)
        return self._n < self._cap

    def shrink(self, now_ns: int) -> bool:
        """Out of fds (EMFILE on a directory here, or on a file: CgroupDir.emfile): give back
        the older half of the kept directories with their files (not those of the read in
        progress) down to SHARE of the limit less the fds others hold
        (at least one directory), and stop growing for REGROW_AFTER_S. True when something
        was closed."""
        idle = sorted((d.used_ns, p) for p, d in self._dirs.items() if d.used_ns != now_ns)
        target = -1  # counted after the first drop: older kernels list /proc/self/fd (an fd)
        for _used, path in idle:
            self.drop(path)
            if target < 0:
                target = self._compute_cap(max(0, open_fd_count() - self._n))
            if self._n <= target:
                break
        self._cap = self._n
        self._squeezed = True
        self._regrow_ns = now_ns + int(self.REGROW_AFTER_S * 1e9)
        return bool(idle)

    def drop(self, path: str) -> None:
        """Close a kept directory's fd and its files' fds."""
        d = self._dirs.pop(path, None)
        if d is not None:
            self.generation += 1
            self._n -= 1 + len(d.files or ())
            d.owned = True
            d.close()
            if self._on_drop is not None:
                self._on_drop(path)

    def sweep(self, now_ns: int) -> None:
        self._next_sweep = now_ns + int(self.SWEEP_EVERY_S * 1e9)
        oldest = now_ns - int(self.IDLE_S * 1e9)
        for path in [p for p, d in self._dirs.items() if d.used_ns < oldest]:
            self.drop(path)

    def close(self) -> None:
        for path in list(self._dirs):
            self.drop(path)


def open_fd_count() -> int:
    """Fds the process holds now (0 when /proc cannot tell). Since Linux 6.2 the size of
    /proc/self/fd is their number: one stat, where listing it took ~10 ms with the 18,000 fds
    kept for 1,000 cgroups on a hybrid host; older kernels say 0 and get the listing (less the
    fd the listing itself holds open)."""
    try:
        size = os.stat("/proc/self/fd").st_size
        if size > 0:
            return size
        return max(0, len(os.listdir("/proc/self/fd")) - 1)
    except OSError:
        return 0
