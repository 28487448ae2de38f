"""Idle samples are deferred by the ledger (nothing moved: only counted) and applied in one
step later. The rows must be exactly those of applying every sample as it comes: the same
quantities, n_samples and resets in every (incarnation, meter, period), through moving and
idle stretches, period boundaries, final samples, a restart and period closing."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from agent.ledger.ledger import Ledger
from agent.ledger.storage import StoredRow
from agent.model.snapshot import WorkloadIdentity
from collectors.samples import CgroupSample
from tests.test_ledger_support import ident, open_ledger, snapshot, synth

PERIOD = 60


def _rows(ledger: Ledger) -> dict[tuple[object, ...], tuple[int, int, int, bool]]:
    out: dict[tuple[object, ...], tuple[int, int, int, bool]] = {}
    r: StoredRow
    for r in ledger.storage.rows(0, 1 << 62, True):
        out[(r.inode, r.subject, r.meter, r.period_start, r.revision)] = (
            r.quantity, r.n_samples, r.n_resets, r.closed)
    return out


def _script(seed: int) -> list[tuple[str, list[CgroupSample]]]:
    """Cycles of 3 workloads at ~1 s, mostly idle, crossing period boundaries; one of them
    ends with a final sample half-way."""
    rnd = random.Random(seed)
    state = {p: {"cpu": 1000 * i, "mem": 4096 * (i + 1), "pids": 1, "io": [0, 0, 0, 0]}
             for i, p in enumerate(("/a", "/b", "/c"))}
    t = 1_000_000.25
    out: list[tuple[str, list[CgroupSample]]] = []
    last: dict[str, CgroupSample] = {}
    for cycle in range(400):
        t += rnd.choice((0.999, 1.0, 1.001, 1.3))
        samples = []
        for i, (path, st) in enumerate(state.items()):
            if path == "/c" and cycle > 200:
                continue
            roll = rnd.random()
            if roll < 0.08:
                st["cpu"] += rnd.randrange(1, 5000)
            elif roll < 0.12:
                st["mem"] += rnd.choice((-4096, 4096, 8192))
            elif roll < 0.14:
                st["pids"] = rnd.choice((1, 2, 3))
            elif roll < 0.15:
                st["io"] = [v + rnd.randrange(0, 512) for v in st["io"]]
            elif roll < 0.155:
                st["cpu"] = rnd.randrange(0, 100)  # a reset
            elif path in last and roll < 0.6:
                # Nothing moved: the reader's idle re-read shares the last sample's values.
                t_ns = int(t * 1e9)
                samples.append(last[path].at(t_ns, t_ns))
                continue
            last[path] = synth(path, 10 + i, t, cpu=st["cpu"], mem=st["mem"],
                               pids=st["pids"], io=tuple(st["io"]))  # type: ignore[arg-type]
            samples.append(last[path])
        out.append(("cycle", samples))
        if cycle == 200:
            out.append(("final", [synth("/c", 12, t + 0.5, cpu=state["/c"]["cpu"],
                                        mem=state["/c"]["mem"], pids=0,
                                        io=tuple(state["/c"]["io"]))]))  # type: ignore[arg-type]
    return out


def _feed(ledger: Ledger, script: list[tuple[str, list[CgroupSample]]]) -> None:
    idents: dict[tuple[str, int], WorkloadIdentity] = {}  # one object per workload, as agentd

    def who(s: CgroupSample) -> WorkloadIdentity:
        key = (s.path, s.inode or 0)
        return idents.setdefault(key, ident(*key))

    for kind, samples in script:
        if kind == "final":
            s = samples[0]
            ledger.observe_final(who(s), s, "boot-a")
        else:
            ledger.observe_snapshot(snapshot([(who(s), s) for s in samples]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deferred_idle_samples_give_the_same_rows_as_applying_each(
    tmp_path: Path, seed: int
) -> None:
    script = _script(seed)
    eager = open_ledger(tmp_path / "eager.db", period=PERIOD, grace=5)
    eager.idle_flush_every = 0
    lazy = open_ledger(tmp_path / "lazy.db", period=PERIOD, grace=5)
    _feed(eager, script)
    _feed(lazy, script)
    # Periods were closed while idle stretches were pending: closed rows already agree.
    closed_e = {k: v for k, v in _rows(eager).items() if v[3]}
    closed_l = {k: v for k, v in _rows(lazy).items() if v[3]}
    assert closed_e and closed_l == closed_e
    # ... while the open period still lacks the pending idle samples (they were deferred).
    assert _rows(lazy) != _rows(eager)
    lazy.flush_idle()
    assert _rows(lazy) == _rows(eager)


def test_idle_samples_are_deferred_then_persisted_within_the_flush_bound(
    tmp_path: Path
) -> None:
    led = open_ledger(tmp_path / "l.db", period=3600)
    who = ident("/a", 7)
    t0 = 1_000_000.0
    for i in range(5):
        led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + i, cpu=500, mem=8192,
                                                     pids=1))]))
    cpu_row = [r for r in led.storage.rows(0, 1 << 62, True) if r.meter == "cpu_usec"]
    assert [r.n_samples for r in cpu_row] == [1]  # the baseline; 4 idle samples pending
    for i in range(5, 5 + led.idle_flush_every):
        led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + i, cpu=500, mem=8192,
                                                     pids=1))]))
    cpu_row = [r for r in led.storage.rows(0, 1 << 62, True) if r.meter == "cpu_usec"]
    assert cpu_row[0].n_samples == 1 + led.idle_flush_every  # flushed at the bound
    # A restart after a kill loses only the pending count: counters continue exactly.
    led2 = open_ledger(tmp_path / "l.db", period=3600)
    led2.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 100, cpu=900, mem=8192,
                                                  pids=1))]))
    total = sum(r.quantity for r in led2.storage.rows(0, 1 << 62, True)
                if r.meter == "cpu_usec")
    assert total == 400


def test_a_read_between_final_and_rmdir_leaves_memory_again(tmp_path: Path) -> None:
    """A cycle can read a container after its final sample and before its rmdir (emptied:
    populated 0). Its rows are stored and it leaves memory again, billed exactly; a refilled
    container (populated again) stays, and one that never had a final is not evicted."""
    led = open_ledger(tmp_path / "l.db", period=3600)
    t0 = 1_000_000.0
    who, other = ident("/a", 7), ident("/b", 8)
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0, cpu=100, mem=4096)),
                                   (other, synth("/b", 8, t0, cpu=5, mem=1))]))
    led.observe_final(who, synth("/a", 7, t0 + 0.5, cpu=250, mem=4096), "boot-a")
    baseline = led.open_row_count

    def empty(path: str, inode: int, t: float, cpu: int) -> CgroupSample:
        return dataclasses.replace(synth(path, inode, t, cpu=cpu, mem=4096), populated=False)

    # The exiting task's last slice, charged after populated 0, shows in the late read.
    led.observe_snapshot(snapshot([(who, empty("/a", 7, t0 + 1, 260)),
                                   (other, empty("/b", 8, t0 + 1, 9))]))
    assert ("boot-a", 7) not in led._series
    assert led.open_row_count == baseline  # /a's rows left again; /b's were there already
    assert ("boot-a", 8) in led._series  # emptied, but never had a final: kept
    cpu = [r for r in led.storage.rows(0, 1 << 62, True)
           if r.inode == 7 and r.meter == "cpu_usec"]
    assert sum(r.quantity for r in cpu) == 260 - 100  # from the first snapshot (baseline) on
    # Refilled: populated again, it stays in memory.
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 2, cpu=300, mem=4096))]))
    assert ("boot-a", 7) in led._series


def test_a_cycle_read_taken_before_the_final_sample_leaves_memory_too(tmp_path: Path) -> None:
    """A cycle that ran while the container ended read it populated, before its final
    sample; the snapshot arrives after the final. Nothing is billed again (an older read) and
    the container leaves memory again, instead of staying until its period closes; a read
    taken after the final (refilled) keeps it."""
    led = open_ledger(tmp_path / "l.db", period=3600)
    t0 = 1_000_000.0
    who = ident("/a", 7)
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0, cpu=100, mem=4096))]))
    led.observe_final(who, synth("/a", 7, t0 + 0.5, cpu=250, mem=4096), "boot-a")
    assert ("boot-a", 7) not in led._series
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 0.4, cpu=240, mem=4096))]))
    assert ("boot-a", 7) not in led._series
    cpu = [r for r in led.storage.rows(0, 1 << 62, True)
           if r.inode == 7 and r.meter == "cpu_usec"]
    assert sum(r.quantity for r in cpu) == 250 - 100
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 0.6, cpu=260, mem=4096))]))
    assert ("boot-a", 7) in led._series  # refilled: read after its final, populated


def test_an_ended_container_is_evicted_and_read_back_if_touched_again(tmp_path: Path) -> None:
    """After its final sample a container's series and open rows leave memory (under churn
    they piled up until the period closed); if it is sampled again (refilled), its rows are
    read back from the store, so usage continues exactly instead of restarting from zero."""
    led = open_ledger(tmp_path / "l.db", period=3600)
    t0 = 1_000_000.0
    led.observe_snapshot(snapshot([(ident("/keep", 1), synth("/keep", 1, t0, cpu=0, mem=1))]))
    who = ident("/a", 7)
    led.observe_snapshot(snapshot([(ident("/keep", 1), synth("/keep", 1, t0 + 1, cpu=0, mem=1)),
                                   (who, synth("/a", 7, t0 + 1, cpu=100, mem=4096))]))
    rows_live = led.open_row_count
    led.observe_final(who, synth("/a", 7, t0 + 1.5, cpu=250, mem=4096), "boot-a")
    assert led.open_row_count < rows_live  # evicted
    # An older read arriving late changes nothing; a newer one continues from the store.
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 1.2, cpu=200, mem=4096))]))
    led.observe_snapshot(snapshot([(who, synth("/a", 7, t0 + 3, cpu=400, mem=4096))]))
    cpu = [r for r in led.storage.rows(0, 1 << 62, True)
           if r.inode == 7 and r.meter == "cpu_usec"]
    assert sum(r.quantity for r in cpu) == 400
    assert sum(r.n_samples for r in cpu) == 3  # the late read counted no sample


def test_an_equal_identity_from_a_rescan_keeps_idle_samples_on_the_shared_path(
    tmp_path: Path,
) -> None:
    # A rescan hands every workload a new identity object equal to the old one; idle samples
    # must go on being decided by their shared values (no counter compared), not for the
    # rest of the life by the comparison path.
    led = open_ledger(tmp_path / "a.db", period=3600)
    who = ident("/a", 10)
    first = synth("/a", 10, 1_000_000.0, cpu=5, mem=4096, pids=1)
    t = 1_000_000.0
    led.observe_snapshot(snapshot([(who, first)]))
    for _ in range(3):
        t += 1
        led.observe_snapshot(snapshot([(who, first.at(int(t * 1e9), int(t * 1e9)))]))
    shared_before = led.shared_idle
    assert shared_before >= 1
    again = dataclasses.replace(who)  # the rescan's: equal, another object
    assert again == who and again is not who
    for _ in range(5):
        t += 1
        led.observe_snapshot(snapshot([(again, first.at(int(t * 1e9), int(t * 1e9)))]))
    assert led.shared_idle - shared_before == 4  # all but the first after the new object
