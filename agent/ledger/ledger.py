"""The accounting state machine: samples in, integer usage per (incarnation, meter, period) out.

An incarnation is (host boot id, cgroup directory inode): a cgroup removed and created again
is a new series. Per incarnation the ledger keeps the last cumulative counters; each new sample
turns the differences into usage, split across periods in proportion to time.

- Counters (cpu_usec, io_*): exact deltas. A value below the previous one within one
  incarnation is a reset: the new value is counted (usage since the reset), the row is flagged
  (n_resets) and nothing is extrapolated.
- memory_byte_seconds: trapezoid between consecutive samples, accumulated in byte-nanoseconds
  and billed as whole byte-seconds, so the rows sum to floor(integral) with no drift.
- memory_peak_bytes / pids_peak: the highest gauge seen in the period, or the kernel's
  high-water mark when it rose since the previous sample.
- net_*: per network namespace (shared namespaces are counted once, for one owner).

Idle samples cost nothing per cycle: a sample in which no counter, no gauge and no high-water
mark moved, in the same period as the series' last applied sample, is only counted (Series.idle);
the stretch is applied in one step when something moves, at a period change, at a final sample,
before periods close and at least every IDLE_FLUSH_EVERY samples: identical to applying each
sample (constant memory integrates to m*dt; every row lies in one period; each sample counts
in n_samples). A kill -9 loses only the unapplied stretch, which the next sample covers.

The first cycle of a fresh ledger takes a baseline (usage before the agent existed is not
billed); any incarnation that appears later is billed from zero, which is how a cgroup that
lived 100 ms between two cycles is billed in full from its final sample.
"""

from __future__ import annotations

import logging
import threading

from agent.ledger.identity_record import identity_record, text
from agent.ledger.meters import (
    CPU_USEC,
    IO_READ_BYTES,
    IO_READ_OPS,
    IO_WRITE_BYTES,
    IO_WRITE_OPS,
    MEMORY_BYTE_SECONDS,
    MEMORY_PEAK_BYTES,
    METERS,
    NET_RX_BYTES,
    NET_TX_BYTES,
    PIDS_PEAK,
    SELF,
)
from agent.ledger.network_totals import netns_of, network_totals
from agent.ledger.periods import NS, period_of, split
from agent.ledger.series import Series
from agent.ledger.storage import Batch, LedgerStorage, RowAcc, RowKey, dump_json
from agent.model.recent_keys import RecentValues
from agent.model.snapshot import Snapshot, WorkloadIdentity
from collectors.samples import CgroupSample

log = logging.getLogger("agent.ledger")

#: An idle stretch is applied (and persisted) at least once per this many samples.
IDLE_FLUSH_EVERY = 60

#: Ended incarnations remembered, so that a read of one between its final sample and rmdir
#: (the next cycle's, at most) does not keep it in memory. 1,024 cover 20 s of 50 lives a
#: second; 4,096 held 0.5 MiB more, the largest part of a soak's first-minute RSS growth.
ENDED_KEPT = 1024
META_STARTED = "accounting_started_ns"
META_CLOSED_BEFORE = "closed_before"


def _counter_values(sample: CgroupSample) -> dict[str, int | None]:
    io = sample.io_totals
    return {
        CPU_USEC: sample.cpu.usage_usec if sample.cpu else None,
        IO_READ_BYTES: io[0] if io else None,
        IO_WRITE_BYTES: io[1] if io else None,
        IO_READ_OPS: io[2] if io else None,
        IO_WRITE_OPS: io[3] if io else None,
    }


class Ledger:
    """Feed it snapshots and final samples; it persists every observation in one transaction."""

    def __init__(
        self, storage: LedgerStorage, *, host_id: str, period_seconds: int = 3600,
        grace_seconds: int = 120,
    ) -> None:
        if period_seconds < 1:
            raise ValueError("period_seconds must be >= 1")
        self.storage = storage
        self.host_id = host_id
        self.period = period_seconds
        self._period_ns = period_seconds * NS
        self.grace = grace_seconds
        self._lock = threading.Lock()
        #: Idle samples are deferred up to this many (0: every sample applied at once).
        self.idle_flush_every = IDLE_FLUSH_EVERY
        #: Running counts for the agent's own metrics (since this process started).
        self.stats = {"cycles": 0, "final_samples": 0, "commit_failures": 0, "resets": 0}
        #: Samples found idle by their shared values alone (no counter compared).
        self.shared_idle = 0
        self._load()

    def _load(self) -> None:
        meta = self.storage.meta()
        self._started = META_STARTED in meta
        self._closed_before = int(meta.get(META_CLOSED_BEFORE, "0"))
        self._open: dict[RowKey, RowAcc] = self.storage.open_rows()
        self._series: dict[tuple[str, int], Series] = {}
        #: Incarnations whose final sample was applied, with its monotonic_ns (the latest
        #: ENDED_KEPT).
        self._ended: RecentValues[tuple[str, int], int] = RecentValues(ENDED_KEPT)
        self._net: dict[tuple[str, str], Series] = {}

    # -- entry points ---------------------------------------------------------------------
    def observe_snapshot(self, snapshot: Snapshot, boot_id: str | None = None) -> None:
        """One collection cycle: every workload's sample, network totals, period closing."""
        boot = boot_id or snapshot.host.boot_id
        net = network_totals(snapshot)
        netns = netns_of(snapshot)
        with self._lock:
            batch = Batch()
            first = not self._started
            owners: dict[str, tuple[int, str, tuple[str, int]]] = {}
            emptied: list[tuple[str, int]] = []
            for wid, state in sorted(snapshot.workloads.items()):
                key = self._observe(batch, boot, state.identity, state.sample, baseline=first)
                if key is not None and self._after_its_end(key, state.sample):
                    emptied.append(key)
                if key is None or wid not in net:
                    continue
                ns = netns.get(wid, state.identity.namespaces.get("net"))
                ns_key = f"net:{ns}" if ns is not None else f"cgroup:{key[1]}"
                # One owner per shared namespace: the outermost cgroup, then the smallest id.
                cand = (state.identity.cgroup.count("/"), wid, key)
                if ns_key not in owners or cand < owners[ns_key]:
                    owners[ns_key] = cand
            for ns_key, (_, wid, key) in sorted(owners.items()):
                rx, tx = net[wid]
                self._observe_net(batch, boot, ns_key, key, rx, tx, snapshot.wall_ns, first)
            if first:
                self._started = True
                batch.meta[META_STARTED] = str(snapshot.wall_ns)
            self._close_due(batch, snapshot.wall_ns)
            self._commit(batch)
            self.stats["cycles"] += 1
            # Read after its final sample but before its rmdir, or read before its final
            # sample by a cycle that ran while it ended: its rows went to the store, and it
            # leaves memory again.
            for key in emptied:
                self._evict(key, snapshot.wall_ns)

    def observe_final(
        self, ident: WorkloadIdentity, sample: CgroupSample, boot_id: str,
    ) -> None:
        """The sample read at `populated 0`, before rmdir: the container's last stretch."""
        with self._lock:
            batch = Batch()
            key = self._observe(batch, boot_id, ident, sample, baseline=False)
            if key is not None:  # the last sample: nothing may stay pending
                self._apply_idle(batch, key, self._series_for(*key)[0])
            if not self._started:
                self._started = True
                batch.meta[META_STARTED] = str(sample.wall_ns)
            self._commit(batch)
            self.stats["final_samples"] += 1
            if key is not None:
                self._evict(key, sample.wall_ns)
                self._ended.put(key, sample.monotonic_ns)

    def _evict(self, key: tuple[str, int], wall_ns: int) -> None:
        """A container that ended holds no memory here: its series and open rows are in the
        store (just committed), read back from there if anything touches them again (under
        churn: 4 KB per life, also for the ~1 % read between final sample and rmdir)."""
        self._series.pop(key, None)
        here = period_of(wall_ns, self.period)
        for start in (here, here - self.period):
            for meter in METERS:
                self._open.pop((*key, SELF, meter, start), None)

    def _after_its_end(self, key: tuple[str, int], sample: CgroupSample) -> bool:
        """A cycle's sample of an incarnation whose final sample was applied: read empty (in
        the window before the rmdir), or read before the final (the cycle ran while it ended;
        at 50 lives a second about one a cycle, each kept in memory until its period closed).
        A refilled one (populated, read after its final) is live again."""
        ended_ns = self._ended.get(key)
        return ended_ns is not None and (sample.populated is False
                                         or sample.monotonic_ns <= ended_ns)

    def close_due(self, now_ns: int) -> None:
        """Close every period whose end + grace has passed at now_ns (an injectable clock)."""
        with self._lock:
            batch = Batch()
            self._close_due(batch, now_ns)
            self._commit(batch)

    @property
    def closed_before(self) -> int:
        """Every period ending at or before this instant (epoch s) is closed: final rows."""
        return self._closed_before

    @property
    def open_row_count(self) -> int:
        return len(self._open)

    def open_rows(self) -> dict[RowKey, RowAcc]:
        with self._lock:
            return {k: RowAcc(v.period_end, v.quantity, v.n_samples, v.n_resets)
                    for k, v in self._open.items()}

    # -- internals ------------------------------------------------------------------------
    def _commit(self, batch: Batch) -> None:
        try:
            self.storage.commit(batch)
        except Exception:
            # Reload the store's consistent state: nothing lost, nothing counted twice.
            log.exception("ledger: could not persist a cycle; reloading the stored state")
            self.stats["commit_failures"] += 1
            self._load()
            raise

    def _series_for(self, boot: str, inode: int) -> tuple[Series, bool]:
        key = (boot, inode)
        s = self._series.get(key)
        if s is not None:
            return s, False
        stored = self.storage.incarnation_state(boot, inode)
        if stored is None:
            s, new = Series(), True
        else:
            s, new = Series.from_json(stored[1]), False
            s.stored = True
        self._series[key] = s
        return s, new

    def _observe(
        self, batch: Batch, boot: str, ident: WorkloadIdentity, sample: CgroupSample,
        *, baseline: bool,
    ) -> tuple[str, int] | None:
        inode = sample.inode if sample.inode is not None else ident.inode
        key = (boot, inode)
        s = self._series.get(key)
        if s is not None and s.seen is not None and ident is s.ident \
                and sample.same_values(s.seen) and not sample.vanished:
            # Most samples: idle, sharing the values of the last idle one; no counter compared.
            mono, t1 = sample.monotonic_ns, sample.wall_ns
            if s.last_mono is not None and mono <= max(s.last_mono, s.idle_mono):
                return key  # an older read arriving after a newer one: already accounted
            if t1 // self._period_ns == (s.last_wall or 0) // self._period_ns:
                self.shared_idle += 1
                self._count_idle(batch, key, s, sample)
                return key
        if sample.vanished or (sample.cpu is None and sample.memory is None
                               and sample.io is None and sample.pids is None):
            return None  # gone, or nothing readable (EACCES): no stretch starts here
        s, new = self._series_for(boot, inode)
        if new:
            s.baseline = baseline
        if s.last_mono is not None and sample.monotonic_ns <= max(s.last_mono, s.idle_mono):
            return key  # an older read arriving after a newer one: already accounted
        t1 = sample.wall_ns
        counters = _counter_values(sample)
        idle = (bool(self.idle_flush_every) and s.last_wall is not None
                and self._idle(s, ident, sample, counters))
        if idle:
            self._count_idle(batch, key, s, sample)
            return key
        s.seen = None
        self._apply_idle(batch, key, s)
        first_sample = s.last_wall is None
        t0 = t1 if s.last_wall is None else s.last_wall
        here = period_of(t1, self.period)
        for meter, value in counters.items():
            if value is None:
                continue
            prev = s.counters.get(meter)
            s.counters[meter] = value
            resets = 0
            self._add(batch, (*key, SELF, meter, here), meter, 0, 1, 0)
            if prev is None:
                if first_sample and s.baseline:
                    continue
                delta, t0m = value, t1  # new series: all of it, at the first sight
            elif value < prev:
                delta, t0m, resets = value, t0, 1
                s.n_resets += 1
                self.stats["resets"] += 1
                log.warning("ledger: %s reset in %s (%d < %d)", meter, ident.cgroup, value, prev)
            else:
                delta, t0m = value - prev, t0
            self._add_split(batch, key, SELF, meter, delta, t0m, t1, resets)
        self._observe_memory(batch, key, s, sample, t0, t1, first_sample)
        s.inner = s.inner or (sample.stat.get("nr_descendants", 0)
                              + sample.stat.get("nr_dying_descendants", 0)) > 0
        s.last_wall, s.last_mono = t1, sample.monotonic_ns
        s.n_samples += 1
        s.pids_last = sample.pids.current if sample.pids is not None else None
        self._persist(batch, key, s, ident)
        return key

    def _count_idle(self, batch: Batch, key: tuple[str, int], s: Series,
                    sample: CgroupSample) -> None:
        """An idle sample: counted now, applied with the others at the flush bound."""
        s.seen = sample
        s.idle += 1
        s.idle_wall, s.idle_mono = sample.wall_ns, sample.monotonic_ns
        if s.idle >= self.idle_flush_every:
            self._apply_idle(batch, key, s)

    def _persist(self, batch: Batch, key: tuple[str, int], s: Series,
                 ident: WorkloadIdentity) -> None:
        if ident is not s.ident:
            if ident != s.ident:
                s.ident_json = dump_json(identity_record(ident))
            s.ident = ident
        batch.incarnations[key] = (self.host_id, text(ident.cgroup), s.ident_json, s.to_json())

    def _idle(self, s: Series, ident: WorkloadIdentity, sample: CgroupSample,
              counters: dict[str, int | None]) -> bool:
        """Nothing in the sample moved since the series' last one, in the same period."""
        if period_of(sample.wall_ns, self.period) != period_of(s.last_wall or 0, self.period):
            return False
        if ident is not s.ident:
            if ident != s.ident:
                return False
            s.ident = ident  # an equal one (a rescan's): the next cycle's check is `is`
        n = 0
        for meter, value in counters.items():
            if value is not None:
                if s.counters.get(meter) != value:
                    return False
                n += 1
        if n != len(s.counters):
            return False
        mem, pids = sample.memory, sample.pids
        if mem is None or mem.current is None or mem.current != s.mem_last:
            return False
        if mem.peak is not None and mem.peak != s.mem_peak:
            return False
        if pids is None or pids.current is None or pids.current != s.pids_last:
            return False
        if pids.peak is not None and pids.peak != s.pids_peak:
            return False
        inner = (sample.stat.get("nr_descendants", 0)
                 + sample.stat.get("nr_dying_descendants", 0)) > 0
        return inner <= s.inner

    def _apply_idle(self, batch: Batch, key: tuple[str, int], s: Series) -> None:
        """Apply the idle stretch: what its samples would have added one by one. Every row
        lies in the period of the last applied sample; the memory integral of a constant is
        m*dt, so the whole byte-seconds are the same as step by step."""
        n = s.idle
        if n == 0:
            return
        t1 = s.idle_wall
        here = period_of(t1, self.period)
        for meter in s.counters:
            self._add(batch, (*key, SELF, meter, here), meter, 0, n, 0)
        if s.mem_last is not None:
            s.mem_cum_bns += s.mem_last * (t1 - (s.last_wall or t1))
            billed = s.mem_cum_bns // NS
            self._add(batch, (*key, SELF, MEMORY_BYTE_SECONDS, here), MEMORY_BYTE_SECONDS,
                      billed - s.mem_billed, n, 0)
            s.mem_billed = billed
            self._add(batch, (*key, SELF, MEMORY_PEAK_BYTES, here), MEMORY_PEAK_BYTES,
                      s.mem_last, n, 0)
        if s.pids_last is not None:
            self._add(batch, (*key, SELF, PIDS_PEAK, here), PIDS_PEAK, s.pids_last, n, 0)
        s.last_wall, s.last_mono = t1, s.idle_mono
        s.n_samples += n
        s.idle = 0
        if s.ident is not None:
            self._persist(batch, key, s, s.ident)

    def flush_idle(self) -> None:
        """Apply and persist every series' idle stretch (at stop, and before an export of
        open rows)."""
        with self._lock:
            batch = Batch()
            for key, s in self._series.items():
                self._apply_idle(batch, key, s)
            self._commit(batch)

    def _observe_memory(
        self, batch: Batch, key: tuple[str, int], s: Series, sample: CgroupSample,
        t0: int, t1: int, first_sample: bool,
    ) -> None:
        here = period_of(t1, self.period)
        mem, pids = sample.memory, sample.pids
        fresh = first_sample and not s.baseline
        if mem is not None and mem.current is not None:
            if s.mem_last is not None and t1 > t0:
                s.mem_cum_bns += (s.mem_last + mem.current) * (t1 - t0) // 2
                billed = s.mem_cum_bns // NS
                self._add_split(batch, key, SELF, MEMORY_BYTE_SECONDS, billed - s.mem_billed,
                                t0, t1, 0)
                s.mem_billed = billed
            self._add(batch, (*key, SELF, MEMORY_BYTE_SECONDS, here), MEMORY_BYTE_SECONDS, 0, 1, 0)
            peak = _peak(mem.current, mem.peak, s.mem_peak, fresh)
            self._add(batch, (*key, SELF, MEMORY_PEAK_BYTES, here), MEMORY_PEAK_BYTES, peak, 1, 0)
            s.mem_last = mem.current
            if mem.peak is not None:
                s.mem_peak = mem.peak
        if pids is not None and pids.current is not None:
            peak = _peak(pids.current, pids.peak, s.pids_peak, fresh)
            self._add(batch, (*key, SELF, PIDS_PEAK, here), PIDS_PEAK, peak, 1, 0)
            if pids.peak is not None:
                s.pids_peak = pids.peak

    def _observe_net(
        self, batch: Batch, boot: str, ns_key: str, owner: tuple[str, int], rx: int, tx: int,
        wall: int, baseline: bool,
    ) -> None:
        s = self._net.get((boot, ns_key))
        if s is None:
            stored = self.storage.netns_state(boot, ns_key)
            s = Series.from_json(stored) if stored else Series(baseline=baseline)
            self._net[(boot, ns_key)] = s
        if s.last_wall is not None and wall <= s.last_wall:
            return
        t0 = wall if s.last_wall is None else s.last_wall
        for meter, value in ((NET_RX_BYTES, rx), (NET_TX_BYTES, tx)):
            prev = s.counters.get(meter)
            s.counters[meter] = value
            if prev is None and s.baseline:
                continue
            resets = int(prev is not None and value < prev)
            delta = value if prev is None or resets else value - prev
            self._add_split(batch, owner, SELF, meter, delta,
                            wall if prev is None else t0, wall, resets)
            self._add(batch, (*owner, SELF, meter, period_of(wall, self.period)), meter, 0, 1, 0)
        s.last_wall = wall
        batch.netns[(boot, ns_key)] = s.to_json()

    def _add_split(
        self, batch: Batch, key: tuple[str, int], subject: str, meter: str, delta: int,
        t0: int, t1: int, resets: int,
    ) -> None:
        parts = split(delta, t0, t1, self.period)
        for n, (start, part) in enumerate(parts):
            # The reset flag goes on the period where the new value was read.
            self._add(batch, (*key, subject, meter, start), meter, part, 0,
                      resets if n == len(parts) - 1 else 0)

    def _add(self, batch: Batch, rk: RowKey, meter: str, qty: int, samples: int,
             resets: int) -> None:
        start = rk[4]
        end = start + self.period
        if end <= self._closed_before:
            batch.late.setdefault(rk, RowAcc(end)).add(meter, qty, samples, resets)
            return
        acc = self._open.get(rk)
        if acc is None:
            s = self._series.get((rk[0], rk[1]))
            acc = self.storage.open_row(rk, end) if s is not None and s.stored else RowAcc(end)
            self._open[rk] = acc
        batch.open_rows[rk] = acc
        acc.add(meter, qty, samples, resets)

    def _close_due(self, batch: Batch, now_ns: int) -> None:
        boundary = period_of(now_ns - self.grace * NS, self.period)
        if boundary <= self._closed_before:
            return
        # Idle stretches of series no longer sampled (gone without a final) in closing periods.
        for key, s in self._series.items():
            if s.idle and period_of(s.idle_wall, self.period) < boundary:
                self._apply_idle(batch, key, s)
        self._closed_before = boundary
        batch.close_before = boundary
        batch.meta[META_CLOSED_BEFORE] = str(boundary)
        # Rows changed in this batch are still written first, then closed (same transaction).
        for rk in [k for k, v in self._open.items() if v.period_end <= boundary]:
            del self._open[rk]
        # Forget series that are no longer open anywhere: they reload from the store if seen.
        live = {(k[0], k[1]) for k in self._open}
        for key in [k for k in self._series if k not in live]:
            del self._series[key]


def _peak(current: int, watermark: int | None, prev_watermark: int | None, fresh: bool) -> int:
    """The gauge, or the kernel's high-water mark when it rose since the previous sample (or
    the series is new, so the whole lifetime is being billed)."""
    if watermark is None:
        return current
    if fresh or (prev_watermark is not None and watermark > prev_watermark):
        return max(current, watermark)
    return current
