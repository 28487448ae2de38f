"""The reader's idle path: compare before reading, and leave out what a quiet parent vouches for.

CgroupReader calls `reread` before a read (True: the last sample stands, re-timed by the
caller), and `after_read` after a read in full, to keep the compare plan and the quiet stretch
of the cgroup's hierarchical files. See collectors.idle_reads and collectors.quiet_parents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from collectors.cgroup_dir import CgroupDir
from collectors.idle_reads import IdlePlan, consumed, quiet_plan, reread
from collectors.open_dirs import OpenDirs
from collectors.quiet_parents import HIER_FILES, QuietParents, self_still
from collectors.samples import UNLIMITED, CgroupSample, CpuSample
from collectors.written_dirs import WrittenDirs


class IdlePath:
    def __init__(self, open_dirs: OpenDirs, written: WrittenDirs, psi: Sequence[str]) -> None:
        self._dirs = open_dirs
        self._written = written
        self.quiet = QuietParents()
        #: The PSI files (of those the reader reads, in order) that are hierarchical.
        self._hier_psi = tuple(i for i, n in enumerate(psi) if n in HIER_FILES)
        #: Reads answered by compare, and of those, reads that left out the CPU and PSI files.
        self.rereads = 0
        self.hier_skips = 0

    def reread(self, path: str, sample: CgroupSample, plan: IdlePlan, whole: bool,
               member_pid: int | None, mono: int) -> tuple[bool, list[CgroupDir]]:
        """(`sample`'s values stand, directories given prefetched bytes for the full read)."""
        inode = sample.inode or 0
        through = None
        if plan.n_hier and not whole:
            through = self.quiet.unchanged_through(path, inode)
        same, stashed = reread(plan, self._dirs, self._written, member_pid, mono, whole,
                               skip_hier=through is not None)
        if not same or whole:
            return False, stashed
        self.rereads += 1
        if through is not None:
            self.hier_skips += 1
            self.quiet.skipped(path, through)
        elif plan.n_hier and plan.datas is not None:
            data = tuple(plan.datas[: plan.n_hier])
            self.quiet.read(path, inode, data, mono, time.monotonic_ns(),
                            self_still(data, _no_quota(sample.cpu)))
        return True, stashed

    @staticmethod
    def carry(compared: IdlePlan, now: IdlePlan | None, compared_datas: list[bytes | None]
              | None, stashed: list[CgroupDir]) -> None:
        """After the full read that followed a compare: when it took every byte compared, its
        sample is of those bytes and the next compare is against them; else against nothing
        (bytes older than the sample could match again and bring back an older sample)."""
        if now is not None:
            same_files = now.dirs == compared.dirs and consumed(stashed)
            now.datas = compared_datas if same_files else None

    def after_read(self, path: str, sample: CgroupSample, before: CgroupSample | None,
                   partial: bool, plan: IdlePlan | None, used: Sequence[CgroupDir],
                   member_pid: int | None, start: int) -> IdlePlan | None:
        """The plan after a read in full (a new one after a quiet partial read, one in which
        the CPU counter did not move), and the quiet stretch of what it read."""
        self._note_quiet(path, sample, used[0], start)
        if not partial or before is None or moved(before.cpu, sample.cpu):
            return plan
        return quiet_plan(used, member_pid, plan, self._written) or plan

    def _note_quiet(self, path: str, sample: CgroupSample, ref: CgroupDir, start: int) -> None:
        """The hierarchical files the read read (their last bytes are the memos')."""
        memos = ref.memos
        cpu = memos.get("cpu.stat") if memos is not None else None
        if memos is None or cpu is None or sample.inode is None:
            self.quiet.forget(path)
            return
        psi = memos.get("psi")
        data: tuple[bytes | None, ...] = (_bytes(cpu[0]),)
        if psi is not None and isinstance(psi[0], tuple):
            data += tuple(_bytes(psi[0][i]) for i in self._hier_psi)
        self.quiet.read(path, sample.inode, data, start, time.monotonic_ns(),
                        self_still(data, _no_quota(sample.cpu)))


def _bytes(value: object) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _no_quota(cpu: CpuSample | None) -> bool:
    return cpu is None or cpu.max_quota_usec is None or cpu.max_quota_usec == UNLIMITED


def moved(prev: CpuSample | None, cpu: CpuSample | None) -> bool:
    """The cgroup may have run a task since `prev`: its CPU usage moved, or is not known."""
    if prev is None or cpu is None or cpu.usage_usec is None:
        return True
    return cpu.usage_usec != prev.usage_usec
