"""The kernel watch's share of the open-file limit, for the fds it keeps per cgroup.

Per followed cgroup the watch may keep cgroup.events and cpu.stat open (2), PSI triggers (3)
and, on a v1 memory hierarchy, an OOM eventfd with its memory.oom_control fd (2). Unbounded,
5,000 hybrid cgroups want ~35,000 fds, beside the reader's pool (collectors.open_dirs, SHARE of
the limit): the process then hits EMFILE wherever it next opens anything (the rescan's listing
of /proc ended agentd). Past its share the watch degrades instead: kept files are read by path,
a cgroup gets no PSI trigger or OOM eventfd; `short` counts the cgroups left without one, said
once in the log, in `container_agent_kernel_watch_*` and in the host facts.
"""

from __future__ import annotations

import errno
import logging
import resource
import threading

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("agent.kernel.watch")

#: Of the open-file limit, the share the watch's kept fds may take. With the reader's 0.7 this
#: leaves a tenth (2,000 of 20,000) for the rest: store, HTTP clients, netlink, transient opens.
SHARE = 0.2
#: Kept files (a latency saving only: they can be read by path) take at most this much of the
#: share, so that PSI triggers and OOM eventfds (without which events are lost) find room.
KEPT_SHARE = 0.5
#: errno values of running out of fds (the process's limit, the system's).
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class FdBudget:
    def __init__(self, share: float = SHARE) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.share = share
        self.cap = self._cap_for(soft)
        #: Fds the watch keeps now (any thread takes and gives back: under _lock).
        self.held = 0
        self.kept = 0
        #: Set when an fd was refused (budget spent or EMFILE): said once.
        self.spent = False
        self.reads_missed = 0
        self._lock = threading.Lock()

    def _cap_for(self, soft: int) -> int:
        return 1 << 30 if soft == resource.RLIM_INFINITY else int(soft * self.share)

    def recap(self) -> None:
        """Read the limit again (agentd raises it when the watch starts)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with self._lock:
            self.cap = self._cap_for(soft)

    def take(self, n: int, what: str, kept: bool = False) -> bool:
        """Room for `n` more fds of `what` (taken when True)."""
        with self._lock:
            room = self.held + n <= self.cap
            if kept:
                room = room and self.kept + n <= int(self.cap * KEPT_SHARE)
            if room:
                self.held += n
                self.kept += n if kept else 0
                return True
        self.refused(what)
        return False

    def give(self, n: int, kept: bool = False) -> None:
        with self._lock:
            self.held -= n
            self.kept -= n if kept else 0

    def refused(self, what: str, emfile: bool = False) -> None:
        """An fd was not had: budget spent, or the process out of fds for now (EMFILE: the
        cap stays, the fds others hold come and go)."""
        with self._lock:
            first, self.spent = not self.spent, True
        if first:
            log.warning("kernel watch out of file descriptors (%d kept, %s): further cgroups "
                        "are watched without some of their fds (first: %s); their files are read "
                        "by path, pressure and v1 OOM events are not told for them",
                        self.held, "EMFILE" if emfile else f"its share of the limit is {self.cap}",
                        what)

    def missed(self, what: str) -> None:
        """A file read by path could not be opened (EMFILE): not read this time (counted; said
        once). The collection reads it next cycle, a polled one is read at the next poll."""
        with self._lock:
            self.reads_missed += 1
            first = self.reads_missed == 1
        if first:
            log.warning("kernel watch out of file descriptors: %s not read (further misses are "
                        "counted in container_agent_kernel_watch_reads_missed_total)", what)

    def describe(self, short: int) -> str:
        """For the host facts: one value while degraded (it must not change every cycle)."""
        return (f"degraded: out of file descriptors (kept fds capped at {self.cap}): some cgroups "
                "without kept files, PSI triggers or OOM eventfds") if short else "ok"


def budget_families(budget: FdBudget, short: int) -> list[Metric]:
    held = GaugeMetricFamily("container_agent_kernel_watch_fds",
                             "Fds the kernel watch keeps for cgroups (files, triggers, eventfds)")
    held.add_metric([], budget.held)
    cap = GaugeMetricFamily("container_agent_kernel_watch_fds_limit",
                            "The most fds the kernel watch keeps (its share of RLIMIT_NOFILE)")
    cap.add_metric([], budget.cap)
    degraded = GaugeMetricFamily(
        "container_agent_kernel_watch_degraded_cgroups",
        "Watched cgroups without some of their kept files, PSI triggers or OOM eventfd for "
        "lack of fds (their files are read by path, their pressure and v1 OOM events not told)")
    degraded.add_metric([], short)
    missed = CounterMetricFamily(
        "container_agent_kernel_watch_reads_missed_total",
        "Kernel watch re-reads of a file by path that found no fd free (EMFILE)")
    missed.add_metric([], budget.reads_missed)
    return [held, cap, degraded, missed]
