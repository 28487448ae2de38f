"""Remote write: snappy and protobuf by hand, pushed to a real Prometheus receiver."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.core.component import AgentContext, Component
from agent.exporters.remote_write import HEADERS, Batch, RemoteWriteComponent, families_to_batches
from agent.exporters.remote_write_codec import (
    encode_timeseries,
    snappy_compress,
    snappy_decompress,
    varint,
)
from agent.model.snapshot import (
    HostInfo,
    Snapshot,
    WorkloadIdentity,
    WorkloadKind,
    WorkloadState,
)
from collectors.samples import CgroupSample, CpuSample, MemorySample
from tests.support import pure_snappy
from tests.support.context import agent_context
from tests.support.prometheus import running_prometheus

# --- codec ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=3000)
    | st.lists(st.sampled_from([b"ab", b"cdef", b"x" * 70]), max_size=300).map(b"".join)
)
def test_snappy_round_trip(data: bytes) -> None:
    """cramjam's blocks decode with an independent decoder, and the reverse."""
    assert snappy_decompress(snappy_compress(data)) == data
    assert pure_snappy.snappy_decompress(snappy_compress(data)) == data
    assert snappy_decompress(pure_snappy.snappy_compress(data)) == data


def test_snappy_corrupt_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="snappy"):
        snappy_decompress(b"\x10\xff\xff")


def test_snappy_compresses_repetitive_payload_across_blocks() -> None:
    data = b"container_agent_cpu_usage_seconds_total{id=\"/docker/abc\"}" * 5000  # > 64 KiB
    out = snappy_compress(data)
    assert snappy_decompress(out) == data
    assert len(out) < len(data) / 10


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """A minimal protobuf reader: (field number, bytes | int | float) in wire order."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
            out.append((num, v - (1 << 64) if v >= 1 << 63 else v))
        elif wire == 1:
            out.append((num, struct.unpack("<d", buf[i : i + 8])[0]))
            i += 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            out.append((num, buf[i : i + n]))
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def test_timeseries_wire_format_sorted_labels_and_negative_timestamp() -> None:
    ts = encode_timeseries({"zeta": "1", "__name__": "m", "alpha": "é"}, [(2.5, -5)])
    fields = _fields(ts)
    labels = [dict(_fields(v)) for n, v in fields if n == 1]
    assert [(lb[1].decode(), lb[2].decode()) for lb in labels] == [
        ("__name__", "m"),
        ("alpha", "é"),
        ("zeta", "1"),
    ]
    (sample,) = [dict(_fields(v)) for n, v in fields if n == 2]
    assert sample == {1: 2.5, 2: -5}
    assert varint(300) == b"\xac\x02"


def test_batches_split_skip_created_and_keep_own_labels() -> None:
    c = CounterMetricFamily("x", "doc", labels=["host"])
    for i in range(5):
        c.add_metric([f"h{i}"], i, created=1.0)  # _created samples must not be pushed
    g = GaugeMetricFamily("g", "doc", labels=["host"])
    g.add_metric(["own"], 7)
    batches = families_to_batches([c, g], 1000, {"host": "extra", "dc": "eu"}, max_samples=4)
    assert [b.samples for b in batches] == [4, 2]
    names, hosts = [], []
    for b in batches:
        for num, ts in _fields(snappy_decompress(b.body)):
            assert num == 1
            labels = {
                lb[1].decode(): lb[2].decode()
                for lb in (dict(_fields(v)) for n, v in _fields(ts) if n == 1)
            }
            names.append(labels["__name__"])
            hosts.append(labels["host"])
            assert labels["dc"] == "eu"
    assert names == ["x_total"] * 5 + ["g"]
    assert hosts == ["h0", "h1", "h2", "h3", "h4", "own"]


# --- against a real Prometheus ---------------------------------------------------------------


class _Probe(Component):
    """Stands in for a capability's live families (network, ledger): known values to find."""

    name = "probe"

    def metric_families(self, snapshot: Snapshot) -> list[Metric]:
        g = GaugeMetricFamily("container_agent_test_probe", "test", labels=["who"])
        g.add_metric(['quote"and\nnewline'], 42.0)
        return [g]


def _snapshot(seq: int, usage_usec: int) -> Snapshot:
    now = time.time_ns()
    ident = WorkloadIdentity(
        id="rw-test-0123456789ab",
        kind=WorkloadKind.CONTAINER,
        runtime="runc",
        name="rw-test",
        cgroup="/rw-test",
        inode=4242,
    )
    sample = CgroupSample(
        path="/rw-test",
        inode=4242,
        monotonic_ns=time.monotonic_ns(),
        wall_ns=now,
        cpu=CpuSample(usage_usec=usage_usec, user_usec=usage_usec // 2),
        memory=MemorySample(current=123 * 4096),
    )
    host = HostInfo("rw-host", "b", "m", "k", "hybrid", 2, 1 << 30, "0.0")
    states = MappingProxyType({ident.id: WorkloadState(ident, sample)})
    return Snapshot(seq, now, time.monotonic_ns(), 1000, host, states)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AgentContext]:
    with agent_context(tmp_path) as context:
        yield context


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_pushed_series_are_queryable_in_prometheus(ctx: AgentContext) -> None:
    with running_prometheus(remote_write_receiver=True) as prom:
        ctx.config = {"remote_write": {"url": prom.remote_write_url, "interval": 0.01,
                                       "labels": {"cluster": "test-eu"}}}
        rw = RemoteWriteComponent()
        ctx.components = {"probe": _Probe(), "remote_write": rw}

        async def push() -> None:
            await rw.start(ctx)
            try:
                await rw.on_snapshot(_snapshot(1, 7_500_000))
                await rw.flush(30)
                await asyncio.sleep(0.05)
                await rw.on_snapshot(_snapshot(2, 9_000_000))
                await rw.flush(30)
            finally:
                await rw.stop()

        _run(push())
        assert rw.dropped_samples == 0, prom.log_tail()
        assert rw.sent_batches == 2
        assert rw.sent_samples > 4

        cpu = prom.query('container_agent_cpu_usage_seconds_total{name="rw-test"}')
        assert len(cpu) == 1
        labels = cpu[0]["metric"]
        assert labels["cluster"] == "test-eu"
        # Dashboards select hosts by instance: pushed series get the host name, as Prometheus
        # would give scraped ones their target.
        assert labels["instance"] == "rw-host" and labels["job"] == "container-agent"
        assert labels["runtime"] == "runc" and labels["cgroup"] == "/rw-test"
        assert float(cpu[0]["value"][1]) == 9.0  # the latest push wins
        samples = prom.query('container_agent_cpu_usage_seconds_total{name="rw-test"}[5m]')
        assert [float(v) for _, v in samples[0]["values"]] == [7.5, 9.0]
        mem = prom.query("container_agent_memory_usage_bytes")
        assert float(mem[0]["value"][1]) == 123 * 4096
        probe = prom.query("container_agent_test_probe")
        assert probe[0]["metric"]["who"] == 'quote"and\nnewline'
        assert prom.query("container_agent_up")[0]["value"][1] == "1"
        assert prom.query("container_agent_cpu_usage_seconds_total_created") == []


def test_receiver_down_retries_then_counts_dropped(ctx: AgentContext) -> None:
    from tests.support.prometheus import free_port

    ctx.config = {"remote_write": {"url": f"http://127.0.0.1:{free_port()}/api/v1/write",
                                   "retries": 2, "backoff": 0.01, "timeout": 2}}
    rw = RemoteWriteComponent()

    async def go() -> bool:
        await rw.start(ctx)
        try:
            return await rw.send(Batch(snappy_compress(b""), 3))
        finally:
            await rw.stop()

    assert _run(go()) is False
    assert rw.failed_requests == 3 and rw.retried_requests == 2


class _Receiver(BaseHTTPRequestHandler):
    statuses: list[int] = []
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(dict(self.headers))
        status = type(self).statuses.pop(0) if type(self).statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"statuses": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/write", handler
    finally:
        server.shutdown()
        server.server_close()


def test_retry_on_5xx_not_on_4xx(ctx: AgentContext, receiver: tuple[str, Any]) -> None:
    url, handler = receiver
    ctx.config = {"remote_write": {"url": url, "retries": 3, "backoff": 0.01}}
    rw = RemoteWriteComponent()
    batch = Batch(snappy_compress(b""), 1)

    async def go() -> tuple[bool, bool]:
        await rw.start(ctx)
        try:
            handler.statuses[:] = [503, 500, 204]
            first = await rw.send(batch)
            handler.statuses[:] = [400, 204]
            second = await rw.send(batch)
            return first, second
        finally:
            await rw.stop()

    assert _run(go()) == (True, False)
    assert len(handler.seen) == 4  # 503, 500, 204, then a single 400 with no retry
    for headers in handler.seen:
        for key, value in HEADERS.items():
            assert headers[key] == value


def test_queue_is_bounded_and_counts_dropped(ctx: AgentContext) -> None:
    ctx.config = {"remote_write": {"queue_size": 2}}
    rw = RemoteWriteComponent()
    _run(rw.start(ctx))  # url empty: off, nothing sent
    rw.enqueue([Batch(b"", 5), Batch(b"", 6), Batch(b"", 7)])
    assert rw.dropped_samples == 5
    assert [b.samples for b in rw._queue] == [6, 7]
    fams = {f.name: f.samples[0].value for f in rw.metric_families(_snapshot(1, 1))}
    assert fams["container_agent_remote_write_dropped_samples"] == 5
    assert fams["container_agent_remote_write_queue_batches"] == 2


def test_agentd_pushes_to_prometheus_receiver() -> None:
    """The real daemon with [remote_write] on: its own series arrive in Prometheus."""
    import socket

    from tests.conftest import IS_ROOT
    from tests.support.agentd import running_agent

    if not IS_ROOT:
        pytest.skip("needs root: agentd walks the cgroup tree")
    host = socket.gethostname()
    with running_prometheus(remote_write_receiver=True) as prom:
        config = {"interval": 1, "remote_write": {"url": prom.remote_write_url, "interval": 1}}
        with running_agent(config) as agent:
            own = f'{{job="container-agent",instance="{host}"}}'
            up = prom.wait_for(
                lambda: prom.query(f"container_agent_up{own}"), 60, "pushed container_agent_up"
            )
            assert up[0]["value"][1] == "1"
            # Workload series and the agent's own remote-write counters came along.
            assert prom.query(f'container_agent_cpu_usage_seconds_total{{instance="{host}"}}')
            sent = prom.wait_for(
                lambda: prom.query("container_agent_remote_write_sent_samples_total > 0"),
                60, "a pushed non-zero sent counter",
            )
            assert float(sent[0]["value"][1]) > 0
            text = agent.get_text("/metrics")
            assert "container_agent_remote_write_dropped_samples_total 0.0" in text


def test_large_multi_block_push_decodes_in_prometheus(ctx: AgentContext) -> None:
    """Go's snappy decoder (inside Prometheus) accepts our encoder's output on a request far
    larger than one 64 KiB block, with long repeated runs (copies split at 64 bytes)."""
    g = GaugeMetricFamily("container_agent_test_bulk", "test", labels=["id", "cgroup", "n"])
    for i in range(3000):
        cid = f"{i % 50:064x}"
        g.add_metric([cid, f"/system.slice/docker-{cid}.scope/" + "x" * 150, str(i)], i)
    (batch,) = families_to_batches([g], int(time.time() * 1000), {}, max_samples=5000)
    assert len(snappy_decompress(batch.body)) > 4 * 65536
    with running_prometheus(remote_write_receiver=True) as prom:
        ctx.config = {"remote_write": {"url": prom.remote_write_url}}
        rw = RemoteWriteComponent()

        async def go() -> bool:
            await rw.start(ctx)
            try:
                return await rw.send(batch)
            finally:
                await rw.stop()

        assert _run(go()), prom.log_tail()
        total = prom.query("count(container_agent_test_bulk)")
        assert total[0]["value"][1] == "3000"
        assert prom.query("sum(container_agent_test_bulk)")[0]["value"][1] == str(sum(range(3000)))
