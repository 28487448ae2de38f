"""The final read of a cgroup that just emptied, in a thread of its own.

At `populated 0` the runtime may remove the cgroup any moment (some at once): its last counters
must be read before that. The event loop may be busy (a scrape, an amend, a burst of inotify
events), and the shared reader's default executor is busy with the cycle, so the read is done
here, one thread that does nothing else. The result goes to `deliver` (called in this thread:
the ledger queues it, events hop to the loop). Latency from the notification's arrival to the
finished read is kept for `container_agent_final_read_latency_seconds`.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from agent.core.urgency import URGENT, Urgency
from collectors import held_io
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample

log = logging.getLogger("agent.kernel.final_read")

#: Histogram buckets of the notification -> finished read latency (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Latencies kept for the p50/p99 of /healthz-style reports (a ring, bounded).
_RECENT = 4096


@dataclass(frozen=True, slots=True)
class FinalRead:
    path: str
    #: monotonic_ns when the notification was taken off the inotify fd.
    notified_ns: int
    deliver: Callable[[CgroupSample], None]


class LatencyHistogram:
    """Cumulative bucket counts, sum and a bounded ring of recent values (thread-safe)."""

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.count = 0
        self.sum = 0.0
        #: Doubles, not a list of floats: 32 KiB at 4,096 values against 128 KiB.
        self._recent = array.array("d")
        #: The same values kept sorted (one insort per read), so a scrape picks its quantiles
        #: instead of sorting 4,096 values (~0.4 ms of a scrape's CPU, under the GIL). None
        #: after the ring dropped its older half: sorted again by the next quantiles().
        self._sorted: array.array[float] | None = array.array("d")
        #: Reads observed: a re-sort made while one came is not kept.
        self._observed = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.counts[i] += 1
            self.count += 1
            self.sum += seconds
            self._observed += 1
            if len(self._recent) >= _RECENT:
                del self._recent[: _RECENT // 2]
                self._sorted = None
            self._recent.append(seconds)
            if self._sorted is not None:
                bisect.insort(self._sorted, seconds)

    def totals(self) -> tuple[list[int], int, float]:
        """Cumulative bucket counts, count, sum: one consistent reading."""
        with self._lock:
            return list(self.counts), self.count, self.sum

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """The recent values' quantiles `qs` (empty before any read), picked from the sorted
        values. After the ring dropped its older half they are sorted again: the ring is
        copied under the lock and sorted outside it, so a scrape's sort (~0.4 ms at 4,096
        values) never holds up observe(), the end of a final read."""
        with self._lock:
            if self._sorted is not None:
                return _picked(self._sorted, qs)
            recent, observed = self._recent[:], self._observed
        values = array.array("d", sorted(recent))
        with self._lock:
            if self._sorted is None and self._observed == observed:
                self._sorted = values
        return _picked(values, qs)


def _picked(values: array.array[float], qs: Sequence[float]) -> list[float]:
    if not values:
        return []
    return [values[min(len(values) - 1, int(q * len(values)))] for q in qs]


def settled(read: Callable[[], bytes | None], tries: int = 3,
            give_way: Callable[[], None] = held_io.sched_yield) -> bytes | None:
    """A counter file read until two reads in a row agree (at most `tries` more reads).

    At `populated 0` the exiting task has left the cgroup's task list but is still running its
    exit; the CPU it used since its last tick is charged at its final context switch, a moment
    later (on this CPU, the yield lets it get there). A runtime that removes the cgroup at once
    leaves only this read, so it is taken as late as the cgroup allows. The yield keeps the
    GIL (collectors.held_io): the CPU goes to the exiting task, not to a thread of ours.
    """
    data = read()
    for _ in range(tries):
        if data is None:
            return None
        give_way()
        again = read()
        if again is None or again == data:
            return data
        data = again
    return data


class FinalReadThread:
    """One daemon thread reading final samples in the order the notifications came."""

    def __init__(self, reader: CgroupReader, urgency: Urgency = URGENT) -> None:
        self.reader = reader
        #: CPU-bound loops elsewhere give way while a read is queued (see agent.core.urgency).
        self.urgency = urgency
        self.latency = LatencyHistogram()
        #: Final reads done here.
        self.reads = 0
        self._queue: queue.SimpleQueue[FinalRead | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="final-read", daemon=True)
        self._thread.start()

    def submit(self, path: str, notified_ns: int, deliver: Callable[[CgroupSample], None],
               at_empty: CgroupSample | None = None) -> None:
        self.urgency.begin()
        self._queue.put(FinalRead(path, notified_ns, deliver))

    def take_early(self, path: str, unknown: Callable[[int], bool]) -> CgroupSample | None:
        return None  # reads are done when asked, none ahead

    def alive(self) -> bool:
        return self._thread.is_alive()

    def read_counts(self) -> dict[str, int]:
        """Final reads done so far, by where (reads_family's labels)."""
        return {"agent": self.reads}

    def close(self) -> None:
        # Reads still queued at shutdown are dropped: their cgroups get final: false.
        with contextlib.suppress(queue.Empty):
            while True:
                if self._queue.get_nowait() is not None:
                    self.urgency.end()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                sample = self.reader.read(job.path, member_pid=None)
            except Exception:
                log.exception("final read of %s failed", job.path)
                continue
            finally:
                self.urgency.end()
            self.reads += 1
            self.latency.observe((time.monotonic_ns() - job.notified_ns) / 1e9)
            try:
                job.deliver(sample)
            except Exception:
                log.exception("final sample of %s not delivered", job.path)


#: The quantiles of the recent latencies exported exactly (the histogram's buckets only bound
#: them: a p99 "<= 10 ms" or "<= 25 ms" says less than the value).
RECENT_QUANTILES = (0.5, 0.9, 0.99)


def recent_latency_family(hist: LatencyHistogram) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(
        "container_agent_final_read_latency_recent_seconds",
        f"Quantiles of the last {_RECENT // 2}-{_RECENT} final reads' latency (exact, from "
        "a ring of the latest values)", labels=["quantile"],
    )
    for q, value in zip(RECENT_QUANTILES, hist.quantiles(RECENT_QUANTILES), strict=False):
        fam.add_metric([repr(q)], value)
    return fam


def reads_family(counts: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(
        "container_agent_final_reads_total",
        "Final reads of emptied cgroups, by where: at_notice (the final-read process, at an "
        "end it found itself: a notice it read off the kernel watch's inotify fd, its poll of "
        "a young cgroup, its look at a new one), process (that process, asked by the agent), "
        "agent (a thread of the agent)", labels=["where"],
    )
    for where in ("at_notice", "process", "agent"):
        fam.add_metric([where], counts.get(where, 0))
    return fam


def latency_family(hist: LatencyHistogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(
        "container_agent_final_read_latency_seconds",
        "From a populated-0 notification taken off inotify to the cgroup's final sample read",
    )
    counts, count, total = hist.totals()
    buckets = [(repr(b), float(n)) for b, n in zip(LATENCY_BUCKETS, counts, strict=True)]
    buckets.append(("+Inf", float(count)))
    fam.add_metric([], buckets, total)
    return fam
