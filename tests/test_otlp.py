"""OTLP encoding (decoded back with opentelemetry-proto) and the exporter's delivery: retries,
partial success, the bounded queue, settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import psutil
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from agent.core.component import AgentContext
from agent.exporters.otlp import OtlpComponent
from agent.exporters.otlp_encode import (
    ALL_METRICS,
    RequestBuilder,
    build_requests,
    resource_prototype,
)
from agent.exporters.push import Batch
from agent.model.snapshot import (
    HostInfo,
    Rates,
    Snapshot,
    WorkloadIdentity,
    WorkloadKind,
    WorkloadState,
)
from collectors.samples import (
    UNLIMITED,
    CgroupSample,
    CpuSample,
    IoDeviceSample,
    MemorySample,
    PidsSample,
    Pressure,
    PressureLine,
    PressureSample,
)
from tests.support.agentd import BIN, write_toml
from tests.support.context import agent_context
from tests.support.otlp_decode import find, resources
from tests.support.otlp_receiver import otlp_receiver

HOST = HostInfo("otlp-host", "b", "m", "k", "hybrid", 2, 1 << 30, "0.0")


def _state(i: int, kind: WorkloadKind = WorkloadKind.CONTAINER, usage: int = 2_500_000,
           labels: dict[str, str] | None = None) -> WorkloadState:
    cg = f"/test/w{i}"
    ident = WorkloadIdentity(
        id=f"{i:012x}" if kind is WorkloadKind.CONTAINER else cg, kind=kind, runtime="docker",
        name=f"w{i}", cgroup=cg, inode=100 + i, pod_name="p", pod_uid="uid-1",
        namespace="ns", labels=MappingProxyType(labels or {"image": "busybox:1.36"}),
    )
    line = PressureLine(0.0, 0.0, 0.0, 1_500_000)
    sample = CgroupSample(
        path=cg, inode=100 + i, monotonic_ns=0, wall_ns=time.time_ns(),
        cpu=CpuSample(usage_usec=usage, user_usec=usage - 500_000, system_usec=500_000,
                      nr_throttled=3, throttled_usec=40_000, max_quota_usec=50_000,
                      max_period_usec=100_000),
        memory=MemorySample(current=10 << 20, max=64 << 20, peak=12 << 20, swap_current=0,
                            stat=MappingProxyType({"anon": 6 << 20, "inactive_file": 1 << 20,
                                                   "pgfault": 1000, "pgmajfault": 7}),
                            events=MappingProxyType({"oom_kill": 2})),
        io=(IoDeviceSample(8, 0, "sda", rbytes=4096, wbytes=8192, rios=1, wios=2),),
        pids=PidsSample(current=3, max=UNLIMITED),
        pressure=PressureSample(cpu=Pressure(some=line, full=None)),
        frozen=False,
    )
    return WorkloadState(ident, sample, Rates(cpu_cores=0.25))


def _snapshot(*states: WorkloadState) -> Snapshot:
    return Snapshot(1, time.time_ns(), time.monotonic_ns(), 0, HOST,
                    MappingProxyType({w.identity.id: w for w in states}))


def _parse(body: bytes) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)
    return req


def _encode(comp: OtlpComponent, snap: Snapshot) -> list[ExportMetricsServiceRequest]:
    out = []
    for batch in comp.encode(snap, []):
        req = ExportMetricsServiceRequest()
        req.ParseFromString(batch.body)
        out.append(req)
    return out


def test_semantic_convention_names_units_and_values() -> None:
    comp = OtlpComponent()
    comp.configure({"compression": "none", "resource_attributes": {"host.name": "spoofed",
                                                                   "team": "infra"}})
    w = _state(1)
    (req,) = _encode(comp, _snapshot(w))
    (r,) = list(resources(req))
    a = r.attributes
    assert a["container.id"] == w.identity.id and a["container.name"] == "w1"
    assert a["container.runtime.name"] == "docker" and a["container.image.name"] == "busybox:1.36"
    assert (a["k8s.pod.name"], a["k8s.pod.uid"], a["k8s.namespace.name"]) == ("p", "uid-1", "ns")
    assert a["host.name"] == "otlp-host", "an extra attribute must not override the agent's"
    assert a["team"] == "infra" and a["container_agent.cgroup.inode"] == 101
    cpu = r.metrics["container.cpu.time"]
    assert (cpu.unit, cpu.sum.is_monotonic, cpu.sum.aggregation_temporality) == ("s", True, 2)
    assert r.value("container.cpu.time", cpu__mode="user") == 2.0
    assert r.value("container.cpu.time", cpu__mode="system") == 0.5
    assert r.value("container.cpu.usage") == 0.25
    assert r.value("container.memory.usage") == 10 << 20
    assert r.value("container.memory.working_set") == 9 << 20
    assert r.value("container.memory.rss") == 6 << 20
    assert r.value("container.memory.available") == (64 - 9) << 20
    # pgfault counts both kinds: minor = 1000 - 7, and the two sum to the kernel's total.
    assert r.value("container.paging.faults", system__paging__fault__type="minor") == 993
    assert r.value("container.paging.faults") == 1000
    assert r.value("container.disk.io", disk__io__direction="read", system__device="sda") == 4096
    assert r.value("container.disk.io", disk__io__direction="write") == 8192
    assert r.value("container_agent.cpu.throttled.time") == 0.04
    assert r.value("container_agent.cpu.limit") == 0.5
    assert r.value("container_agent.memory.oom_kills") == 2
    assert r.value("container_agent.pressure.stall.time",
                   container_agent__pressure__resource="cpu") == 1.5
    assert r.value("container_agent.pids.current") == 3
    assert "container_agent.pids.limit" not in r.metrics  # unlimited: no point
    assert "container.uptime" not in r.metrics  # no known start: no made-up uptime
    assert not r.metrics["container.memory.usage"].sum.is_monotonic
    assert r.metrics["container.cpu.usage"].WhichOneof("data") == "gauge"
    known = {d.name: d.unit for d in ALL_METRICS}
    for name, m in r.metrics.items():
        assert known[name] == m.unit


def test_start_time_is_stable_per_incarnation_and_runtime_created_gives_uptime() -> None:
    comp = OtlpComponent()
    comp.configure({"compression": "none"})
    created = "2026-01-02T03:04:05.5Z"
    w = _state(2, labels={"created": created})
    first = find(_encode(comp, _snapshot(w))[0], "container_agent.cgroup", "/test/w2")
    later = _state(2, usage=3_000_000, labels={"created": created})
    second = find(_encode(comp, _snapshot(later))[0], "container_agent.cgroup", "/test/w2")
    assert first is not None and second is not None
    p1, p2 = first.points("container.cpu.time")[0], second.points("container.cpu.time")[0]
    assert p1.start_time_unix_nano == p2.start_time_unix_nano == 1767323045_500_000_000
    assert p2.as_double > p1.as_double
    (up,) = second.points("container.uptime")
    assert up.as_double == pytest.approx((up.time_unix_nano - 1767323045_500_000_000) / 1e9)
    # A new incarnation (new inode) at the same path gets its own start time.
    reborn = _state(2, labels={})
    reborn = WorkloadState(
        WorkloadIdentity(**{**{f: getattr(reborn.identity, f) for f in
                               WorkloadIdentity.__slots__}, "inode": 999}),  # type: ignore[arg-type]
        reborn.sample)
    third = find(_encode(comp, _snapshot(reborn))[0], "container_agent.cgroup", "/test/w2")
    assert third is not None
    assert third.points("container.cpu.time")[0].start_time_unix_nano != (
        p1.start_time_unix_nano)
    assert len(comp._starts) == 1, "the old incarnation's start must be forgotten"


def test_requests_split_on_whole_resources_and_kinds_filter() -> None:
    states = [_state(i) for i in range(10)] + [_state(50, WorkloadKind.SERVICE)]
    snap = _snapshot(*states)
    builder = RequestBuilder()
    resources_of = {w.identity.id: resource_prototype([]) for w in states}
    [(_, per)] = build_requests(snap, builder, {}, {}, resources_of, 10**9)
    per_workload = per // len(states)
    parts = build_requests(snap, builder, {}, {}, resources_of, per_workload * 3)
    assert [n for _, n in parts] == [per_workload * 3] * 3 + [per_workload * 2]
    assert sum(len(_parse(body).resource_metrics) for body, _ in parts) == len(states)
    # The hand-framed body is byte for byte what protobuf serializes for the same request,
    # also on later pushes, where the kept messages only get new values.
    for _ in range(2):
        for body, _n in build_requests(snap, builder, {}, {}, resources_of, per_workload * 3):
            assert _parse(body).SerializeToString() == body
    # A workload that leaves takes its kept messages with it.
    assert len(builder._workloads) == len(states)
    build_requests(_snapshot(*states[:4]), builder, {}, {}, resources_of, 10**9)
    assert sorted(builder._workloads) == sorted(w.identity.id for w in states[:4])
    comp = OtlpComponent()
    comp.configure({"compression": "none", "kinds": ["service"]})
    (req,) = _encode(comp, snap)
    (only,) = list(resources(req))
    assert only.attributes["container_agent.kind"] == "service"
    assert only.attributes["container_agent.workload.id"] == "/test/w50"
    assert "container.id" not in only.attributes


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AgentContext]:
    with agent_context(tmp_path) as context:
        yield context


def test_retries_only_what_otlp_allows_and_counts_partial_success(ctx: AgentContext) -> None:
    with otlp_receiver() as rx:
        ctx.config = {"otlp": {"endpoint": rx.endpoint, "retries": 3, "backoff": 0.01}}
        comp = OtlpComponent()

        async def go() -> list[bool]:
            await comp.start(ctx)
            try:
                body = ExportMetricsServiceRequest().SerializeToString()
                rx.statuses[:] = [503, 502, 200]
                first = await comp.send(Batch(body, 5))
                rx.statuses[:] = [400]
                second = await comp.send(Batch(body, 5))
                rx.statuses[:] = [500]  # not retryable in OTLP/HTTP
                third = await comp.send(Batch(body, 5))
                rx.reject_points = 4
                fourth = await comp.send(Batch(body, 5))
                return [first, second, third, fourth]
            finally:
                await comp.stop()

        assert asyncio.run(go()) == [True, False, False, True]
        assert rx.answered == [503, 502, 200, 400, 500, 200]
        assert comp.retried_requests == 2 and comp.failed_requests == 4
        assert comp.dropped_samples == 4 and comp.rejected_points == 4


def test_receiver_down_and_queue_bound_count_dropped_points(ctx: AgentContext) -> None:
    from tests.support.prometheus import free_port

    ctx.config = {"otlp": {"endpoint": f"http://127.0.0.1:{free_port()}", "retries": 1,
                           "backoff": 0.01, "timeout": 2, "queue_size": 2}}
    comp = OtlpComponent()

    async def go() -> bool:
        await comp.start(ctx)
        try:
            return await comp.send(Batch(b"", 3))
        finally:
            await comp.stop()

    assert asyncio.run(go()) is False
    assert comp.failed_requests == 2 and comp.retried_requests == 1
    comp.enqueue([Batch(b"", 5), Batch(b"", 6), Batch(b"", 7)])
    assert comp.dropped_samples == 5
    fams = {f.name: f.samples[0].value for f in comp.metric_families(_snapshot())}
    assert fams["container_agent_otlp_dropped_points"] == 5
    assert fams["container_agent_otlp_queue_requests"] == 2


@pytest.mark.parametrize(("table", "message"), [
    ('endpoint = "collector:4318"', "otlp.endpoint"),
    ('kinds = ["pod"]', "otlp.kinds"),
    ('compression = "zstd"', "otlp.compression"),
    ("headers = { Authorization = 3 }", "otlp.headers"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path, table: str, message: str) -> None:
    cfg = tmp_path / "agent.toml"
    write_toml(cfg, {"state_dir": str(tmp_path)})
    cfg.write_text(cfg.read_text() + f"\n[otlp]\n{table}\n")
    r = subprocess.run([str(BIN / "agentd"), "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_uptime_appears_once_the_init_process_is_known_without_moving_the_start() -> None:
    """A runtime creates the cgroup before its init process: the first push has no start
    but the counters' start must not move when the init process shows up."""
    comp = OtlpComponent()
    comp.configure({"compression": "none"})
    w = _state(3, labels={})
    first = find(_encode(comp, _snapshot(w))[0], "container_agent.cgroup", "/test/w3")
    assert first is not None and "container.uptime" not in first.metrics
    # Our own process plays the container's init: psutil gives its start.
    ident = dataclasses.replace(w.identity, init_pid=os.getpid())
    later = WorkloadState(ident, dataclasses.replace(w.sample, wall_ns=time.time_ns()))
    second = find(_encode(comp, _snapshot(later))[0], "container_agent.cgroup", "/test/w3")
    assert second is not None
    (up,) = second.points("container.uptime")
    alive_s = time.time() - psutil.Process().create_time()
    assert abs(up.as_double - alive_s) < 2.0
    assert (second.points("container.cpu.time")[0].start_time_unix_nano
            == first.points("container.cpu.time")[0].start_time_unix_nano)
