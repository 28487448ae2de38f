"""The /metrics row cache: a rendering that reuses kept rows is byte for byte a fresh one."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from agent.exporters.cadvisor import cadvisor_render
from agent.exporters.metrics import (
    DEFAULT_OPTIONS,
    MetricsOptions,
    WorkloadRowCaches,
    render_workload_families,
)
from agent.model.snapshot import HostInfo, Snapshot, WorkloadState
from tests.support.bench_workloads import workload

HOST = HostInfo("h", "boot", "mid", "6.18", "hybrid", 2, 1 << 30, "0.1.0")


def _snap(seq: int, states: list[WorkloadState]) -> Snapshot:
    return Snapshot(seq=seq, wall_ns=seq, monotonic_ns=seq, cycle_cpu_ns=0, host=HOST,
                    workloads=MappingProxyType({w.identity.id: w for w in states}))


def _idle(w: WorkloadState, seq: int) -> WorkloadState:
    """Read again with nothing changed: the idle path's sample (same values, new time)."""
    s = w.sample
    return WorkloadState(w.identity, s.at(s.monotonic_ns + seq * 10**9, s.wall_ns + seq * 10**9))


def _body(snap: Snapshot, caches: WorkloadRowCaches | None,
          options: MetricsOptions = DEFAULT_OPTIONS, om: bool = False) -> bytes:
    """The workload and cAdvisor families as a scrape sends them (None: nothing kept)."""
    families = render_workload_families(snap, options, caches)
    families += cadvisor_render(snap, caches.cadvisor if caches is not None else None)
    return b"".join((f.om_header if om else f.text_header) + f.lines for f in families)


def test_kept_rows_render_exactly_what_a_fresh_renderer_does() -> None:
    rows = WorkloadRowCaches()
    states = [workload(i) for i in range(10)]
    first = _snap(1, states)
    assert _body(first, rows) == _body(first, None)
    made = rows.metrics.rendered
    assert made == 10 and rows.metrics.reused == 0

    # Every workload idle: all rows reused, and cAdvisor's last_seen (the read's time) is new.
    states = [_idle(w, 2) for w in states]
    second = _snap(2, states)
    body = _body(second, rows)
    assert body == _body(second, None)
    assert rows.metrics.rendered == made and rows.metrics.reused == 10
    assert rows.info.reused == rows.cadvisor.reused == 10
    seen = b"container_last_seen{"
    assert [ln for ln in body.splitlines() if ln.startswith(seen)] != [
        ln for ln in _body(first, None).splitlines() if ln.startswith(seen)]

    # One busy, one renamed, one gone, one new; OpenMetrics as well.
    busy = states[3]
    cpu = busy.sample.cpu
    assert cpu is not None
    states[3] = WorkloadState(busy.identity, replace(
        busy.sample, cpu=replace(cpu, usage_usec=cpu.usage_usec + 1)))
    states[5] = WorkloadState(replace(states[5].identity, name="renamed"), states[5].sample)
    del states[7]
    states.append(workload(10))
    third = _snap(3, states)
    body = _body(third, rows)
    assert body == _body(third, None)
    assert b'name="renamed"' in body
    assert rows.metrics.rendered == made + 3  # the busy, the renamed, the new
    assert len(rows.metrics) == 10  # the gone workload's row was dropped
    fourth = _snap(4, [_idle(w, 4) for w in states])
    assert _body(fourth, rows, om=True) == _body(fourth, None, om=True)


def test_other_options_start_the_rows_afresh() -> None:
    states = [workload(i) for i in range(3)]
    rows = WorkloadRowCaches()
    _body(_snap(1, states), rows)
    labelled = MetricsOptions(identity_labels=True)
    again = _snap(2, [_idle(w, 2) for w in states])
    body = _body(again, rows, labelled)
    assert body == _body(again, None, labelled)
    assert b'container_agent_cpu_usage_seconds_total{id="' in body and b'name="app-1"' in body
