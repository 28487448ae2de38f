"""What CgroupReader keeps of a cgroup between reads: its last sample, and when it is due to
be read in full again."""

from __future__ import annotations

from dataclasses import dataclass

from collectors.idle_reads import IdlePlan
from collectors.samples import CgroupSample

#: Every file is read at least once per this many reads and seconds, whichever is longer: a
#: staleness bound on files that move only with CPU in the cgroup (a safety net: the
#: refresh finds nothing new unless that rule is broken). A refresh costs ~45 idle re-reads
#: in Python (at 1 s cycles, every 20th read was a fifth of the agent's Python time).
FULL_READ_EVERY = 20
FULL_READ_AFTER_S = 60.0


@dataclass(slots=True)
class LastRead:
    """A cgroup's last sample, and its reads since everything was read."""

    sample: CgroupSample
    partial_reads: int
    #: What an idle re-read compares (set by a quiet read), see collectors.idle_reads.
    plan: IdlePlan | None = None
    #: When everything was last read (monotonic ns).
    whole_mono: int = 0

    def due(self, mono: int, after_ns: int) -> bool:
        """Every counter file is due again (FULL_READ_EVERY, FULL_READ_AFTER_S)."""
        return self.partial_reads >= FULL_READ_EVERY and mono - self.whole_mono >= after_ns
