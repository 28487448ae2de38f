"""The ledger state machine on synthetic samples: exact deltas, resets, incarnations, period
splitting, memory integration, peaks, persistence, closing, corrections, reconciliation."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent.ledger.storage as storage
from agent.ledger.ledger import Ledger
from agent.ledger.storage import StoredRow
from tests.test_ledger_support import ident, open_ledger, snapshot, synth

END = 10**11
T0 = 1_800_000_000  # a multiple of 3600 and of 10: a period boundary


def rows(ledger: Ledger, include_open: bool = True) -> list[StoredRow]:
    return ledger.storage.rows(0, END, include_open)


def total(ledger: Ledger, cgroup: str, meter: str, subject: str = "self") -> int:
    return sum(r.quantity for r in rows(ledger)
               if r.cgroup == cgroup and r.meter == meter and r.subject == subject)


def by_period(ledger: Ledger, cgroup: str, meter: str) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for r in rows(ledger):
        if r.cgroup == cgroup and r.meter == meter and r.subject == "self":
            out[r.period_start] += r.quantity
    return dict(out)


def test_first_cycle_is_a_baseline_then_deltas_are_exact(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    a = ident("/a", 11)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 1, cpu=5000))]))
    assert total(led, "/a", "cpu_usec") == 0
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 2, cpu=6000))]))
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 3, cpu=9000))]))
    assert total(led, "/a", "cpu_usec") == 4000
    # Every sample counted once on the cpu row, the baseline too (its value is the start).
    assert sum(r.n_samples for r in rows(led) if r.meter == "cpu_usec") == 3


def test_an_incarnation_seen_later_is_billed_from_zero(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    a, b = ident("/a", 11), ident("/b", 12)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 1, cpu=5000))]))
    led.observe_final(b, synth("/b", 12, T0 + 1.5, cpu=777), "boot-a")
    assert total(led, "/b", "cpu_usec") == 777


def test_backwards_counter_is_a_reset_counted_from_the_new_value(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    a = ident("/a", 11)
    for t, v in ((1, 1000), (2, 5000), (3, 300), (4, 500)):
        led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + t, cpu=v))]))
    assert total(led, "/a", "cpu_usec") == 4000 + 300 + 200
    assert sum(r.n_resets for r in rows(led) if r.meter == "cpu_usec") == 1


def test_a_new_inode_at_the_same_path_is_a_new_series_not_a_reset(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    old, new = ident("/a", 11), ident("/a", 99)
    led.observe_snapshot(snapshot([(old, synth("/a", 11, T0 + 1, cpu=1000))]))
    led.observe_snapshot(snapshot([(old, synth("/a", 11, T0 + 2, cpu=8000))]))
    led.observe_snapshot(snapshot([(new, synth("/a", 99, T0 + 3, cpu=50))]))
    per_inode = defaultdict(int)
    for r in rows(led):
        if r.meter == "cpu_usec":
            per_inode[r.inode] += r.quantity
            assert r.n_resets == 0
    assert dict(per_inode) == {11: 7000, 99: 50}


def test_a_stretch_over_a_boundary_is_split_by_time(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db", period=10)
    a = ident("/a", 11)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 2, cpu=0, io=(0, 0, 0, 0)))]))
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 14, cpu=1201,
                                              io=(1000, 10, 3, 1)))]))
    cpu = by_period(led, "/a", "cpu_usec")
    assert cpu == {T0: 1201 * 8 // 12, T0 + 10: 1201 - 1201 * 8 // 12}
    assert sum(by_period(led, "/a", "io_read_bytes").values()) == 1000
    assert sum(by_period(led, "/a", "io_write_ops").values()) == 1


def test_memory_is_integrated_by_trapezoid_in_whole_byte_seconds(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    a = ident("/a", 11)
    g = 1 << 30
    for t, m in ((0, g), (10, g), (20, 3 * g), (20.5, 3 * g + 1)):
        led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + t, mem=m))]))
    # 10 s at 1 GiB, a 10 s ramp from 1 to 3 GiB, half a second at ~3 GiB.
    exact_bns = g * 10 * 10**9 + 2 * g * 10 * 10**9 + (6 * g + 1) * 5 * 10**8 // 2
    assert total(led, "/a", "memory_byte_seconds") == exact_bns // 10**9


def test_peaks_use_the_kernel_watermark_when_it_rose(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db", period=10)
    a = ident("/a", 11)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 1, mem=100, mem_peak=500,
                                              pids=2, pids_peak=9))]))
    # Baseline: the old lifetime watermark is not this period's peak.
    assert total(led, "/a", "memory_peak_bytes") == 100
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 12, mem=120, mem_peak=800,
                                              pids=3, pids_peak=9))]))
    assert by_period(led, "/a", "memory_peak_bytes")[T0 + 10] == 800
    assert by_period(led, "/a", "pids_peak")[T0 + 10] == 3


def test_restart_continues_from_stored_counters(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    a = ident("/a", 11)
    led = open_ledger(db)
    for t, v in ((1, 100), (2, 400)):
        led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + t, cpu=v))]))
    led.storage.store.close()
    led2 = open_ledger(db)  # a new process: state comes from the store only
    led2.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 3, cpu=1000))]))
    assert total(led2, "/a", "cpu_usec") == 900
    keys = [(r.inode, r.subject, r.meter, r.period_start, r.revision) for r in rows(led2)]
    assert len(keys) == len(set(keys))


def test_closed_rows_never_change_and_late_data_is_a_correction(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    a = ident("/a", 11)
    led = open_ledger(db, period=10, grace=5)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 1, cpu=0))]))
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 9, cpu=800))]))
    led.close_due((T0 + 15) * 10**9)
    closed = rows(led, include_open=False)
    assert [(r.period_start, r.quantity, r.revision) for r in closed
            if r.meter == "cpu_usec" and r.subject == "self"] == [(T0, 800, 0)]
    # The agent was down from T0+9 to T0+21: the stretch covers the closed period [T0, T0+10).
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 21, cpu=2000))]))
    cpu = [r for r in rows(led) if r.meter == "cpu_usec" and r.subject == "self"]
    got = sorted((r.period_start, r.revision, r.quantity, r.closed) for r in cpu)
    assert got == [(T0, 0, 800, True), (T0, 1, 100, True), (T0 + 10, 0, 1000, False),
                   (T0 + 20, 0, 100, False)]
    assert sum(r.quantity for r in cpu) == 2000


@dataclass(frozen=True)
class _Net:
    totals_by_workload: dict[str, tuple[int, int]]
    netns_by_workload: dict[str, int]


def test_network_is_counted_once_per_namespace(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    pause, app = ident("/pod/pause", 21), ident("/pod/app", 22)

    def snap(t: int, rx: int, tx: int) -> None:
        net = _Net({"/pod/pause": (rx, tx), "/pod/app": (rx, tx)},
                   {"/pod/pause": 7, "/pod/app": 7})
        led.observe_snapshot(snapshot([(pause, synth("/pod/pause", 21, T0 + t, cpu=0)),
                                       (app, synth("/pod/app", 22, T0 + t, cpu=0))],
                                      extras={"network": net}))
    snap(1, 1000, 50)
    snap(2, 4000, 80)
    snap(3, 4500, 100)
    net_rows = [r for r in rows(led) if r.meter.startswith("net_")]
    assert {r.cgroup for r in net_rows} == {"/pod/app"}
    assert total(led, "/pod/app", "net_rx_bytes") == 3500
    assert total(led, "/pod/app", "net_tx_bytes") == 50


def test_parent_balances_with_an_unattributed_row(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db", period=10, grace=0)
    p, c1 = ident("/p", 1, kind="cgroup"), ident("/p/c1", 2)
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 1, cpu=100)),
                                   (c1, synth("/p/c1", 2, T0 + 1, cpu=40))]))
    # c2 lives and dies between cycles; only its final sample reaches the ledger.
    led.observe_final(ident("/p/c2", 3), synth("/p/c2", 3, T0 + 2, cpu=600), "boot-a")
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 3, cpu=10100)),
                                   (c1, synth("/p/c1", 2, T0 + 3, cpu=3040))]))
    led.close_due((T0 + 10) * 10**9)
    assert total(led, "/p", "cpu_usec") == 10000
    assert total(led, "/p", "cpu_usec", "unattributed") == 10000 - 3000 - 600


def test_each_parent_balances_against_its_nearest_children_in_a_tree(tmp_path: Path) -> None:
    """A sibling whose name extends another's ("a-b" beside "a"), a grandchild, and a path with
    two incarnations in the period: each CPU goes to its nearest tracked ancestor only."""
    led = open_ledger(tmp_path / "a.db", period=10, grace=0)
    p, a, ab = ident("/p", 1, kind="cgroup"), ident("/p/a", 2), ident("/p/a-b", 4)
    inner = {"nr_descendants": 1}
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 1, cpu=100, stat=inner)),
                                   (a, synth("/p/a", 2, T0 + 1, cpu=0, stat=inner)),
                                   (ab, synth("/p/a-b", 4, T0 + 1, cpu=0))]))
    led.observe_final(ident("/p/a/x", 3), synth("/p/a/x", 3, T0 + 2, cpu=500), "boot-a")
    # /p/q had descendants the agent never tracked: both incarnations' CPU is unattributed,
    # on the later one's row.
    for inode, t, cpu in ((5, T0 + 1.5, 50), (6, T0 + 2.5, 60)):
        led.observe_final(ident("/p/q", inode), synth("/p/q", inode, t, cpu=cpu, stat=inner),
                          "boot-a")
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 3, cpu=10100, stat=inner)),
                                   (a, synth("/p/a", 2, T0 + 3, cpu=3000, stat=inner)),
                                   (ab, synth("/p/a-b", 4, T0 + 3, cpu=700))]))
    led.close_due((T0 + 10) * 10**9)
    assert total(led, "/p", "cpu_usec", "unattributed") == 10000 - 3000 - 700 - 50 - 60
    assert total(led, "/p/a", "cpu_usec", "unattributed") == 3000 - 500
    assert {(r.cgroup, r.inode, r.quantity) for r in rows(led) if r.subject == "unattributed"
            and r.cgroup == "/p/q"} == {("/p/q", 6, 110)}
    assert {r.cgroup for r in rows(led) if r.subject == "unattributed"} == {"/p", "/p/a", "/p/q"}


def test_a_churned_period_closes_in_chunks_and_balances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many short lives under one parent: every row closes (over several UPDATE chunks), and
    the parent's unattributed row is its CPU minus all its children's, the one under a
    directory the agent never tracked included (its nearest tracked ancestor is the parent)."""
    monkeypatch.setattr(storage, "CLOSE_CHUNK", 3)
    led = open_ledger(tmp_path / "a.db", period=10, grace=0)
    p = ident("/p", 1, kind="cgroup")
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 1, cpu=100))]))
    for i in range(10):  # seen only by their final samples
        led.observe_final(ident(f"/p/c{i}", 10 + i),
                          synth(f"/p/c{i}", 10 + i, T0 + 2, cpu=100 * (i + 1)), "boot-a")
    led.observe_final(ident("/p/mid/x", 30), synth("/p/mid/x", 30, T0 + 2, cpu=7), "boot-a")
    led.observe_snapshot(snapshot([(p, synth("/p", 1, T0 + 3, cpu=10100))]))
    assert len([r for r in rows(led) if r.period_start == T0]) > 3 * storage.CLOSE_CHUNK
    led.close_due((T0 + 10) * 10**9)
    assert [r for r in rows(led) if r.period_start == T0 and not r.closed] == []
    assert total(led, "/p", "cpu_usec") == 10000
    assert total(led, "/p", "cpu_usec", "unattributed") == 10000 - 5500 - 7
    assert {r.cgroup for r in rows(led) if r.subject == "unattributed"} == {"/p"}


def test_a_stretch_into_a_period_that_closes_in_the_same_cycle_is_kept(tmp_path: Path) -> None:
    # grace 0: the second sample's cycle closes the first sample's period at once.
    led = open_ledger(tmp_path / "a.db", period=10, grace=0)
    a = ident("/a", 11)
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 8, cpu=0))]))
    led.observe_snapshot(snapshot([(a, synth("/a", 11, T0 + 12, cpu=400))]))
    closed = rows(led, include_open=False)
    assert [(r.period_start, r.quantity) for r in closed if r.meter == "cpu_usec"] == [(T0, 200)]
    assert total(led, "/a", "cpu_usec") == 400


def test_an_undecodable_cgroup_name_does_not_stop_accounting(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "a.db")
    bad_path = "/x" + b"\xff".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    bad, good = ident(bad_path, 5, labels={"k": bad_path}), ident("/ok", 6)
    for t, v in ((1, 10), (2, 50)):
        led.observe_snapshot(snapshot([(bad, synth(bad_path, 5, T0 + t, cpu=v)),
                                       (good, synth("/ok", 6, T0 + t, cpu=v * 2))]))
    assert total(led, "/ok", "cpu_usec") == 80
    assert total(led, "/x\\xff", "cpu_usec") == 40
