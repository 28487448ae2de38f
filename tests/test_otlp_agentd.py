"""The real agentd pushing OTLP to a real HTTP receiver on 127.0.0.1, decoded with
opentelemetry-proto: CPU time against the kernel's counter, a runc container's resource,
cumulative sums across pushes, and the dropped counter when the receiver is down."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agentd import running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.netns import NetnsFactory
from tests.support.otlp_decode import attrs, find
from tests.support.otlp_receiver import Received, otlp_receiver
from tests.support.prometheus import free_port
from tests.support.runc import RuncUnavailable, runc_container

pytestmark = pytest.mark.slow

TICK_USEC = 10_000
#: The first snapshot of a whole host: on this shared 2-core machine, under other helpers'
#: test load, a plain agentd (no OTLP) was measured taking 46 s to answer /healthz.
READY_S = 120
POD_ANNOTATIONS = {
    "io.kubernetes.cri.sandbox-name": "web-7d9f",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "io.kubernetes.cri.container-name": "nginx",
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.27",
}


def test_agentd_pushes_cpu_time_resources_and_cumulative_sums(cgroups: CgroupFactory) -> None:
    busy = cgroups.create("otlp-busy")
    busy.burn()
    with contextlib.ExitStack() as stack:
        try:
            container = stack.enter_context(
                runc_container(cgroups.create(), annotations=POD_ANNOTATIONS))
        except RuncUnavailable as e:
            pytest.skip(f"runc cannot run here: {e}")
        # Give it an eth0 (veth to a test namespace) and send it traffic: network.io.
        nets = stack.enter_context(NetnsFactory("otlp"))
        pair = nets.veth(nets.create(), nets.attach(container.init_pid), "ca0", "eth0")
        arrived = nets.send_udp(pair, 200, 1000)
        assert arrived > 0
        rx = stack.enter_context(otlp_receiver())
        # Read the kernel's counter the moment each request arrives.
        rx.on_request = busy.cpu_usage_usec
        config = {"interval": 1, "otlp": {
            "endpoint": rx.endpoint + "/", "interval": 1,
            "max_points_per_request": 1_000_000,  # one request per push: one probe per push
            "headers": {"X-Scope-OrgID": "tenant-1"},
            "resource_attributes": {"deployment.environment": "test"},
        }}
        sampler = stack.enter_context(kernel_sampler(busy.cpu_usage_usec))
        agent = stack.enter_context(running_agent(config, ready=False))
        agent.wait_ready(READY_S)

        def both() -> list[Received]:
            """Pushes holding both workloads, once each: a request the receiver took but
            answered after the client's timeout (a loaded host) is sent again, identical."""
            out: dict[bytes, Received] = {}
            for r in rx.requests:
                if find(r.request, "container_agent.cgroup", busy.rel) and find(
                        r.request, "container.id", container.id):
                    out.setdefault(r.request.SerializeToString(deterministic=True), r)
            return list(out.values())

        got = rx.wait_for(lambda: len(both()) >= 4, 90) and both()[:4]
        metrics_text = agent.get_text("/metrics")
        init_pid = container.init_pid
        check_runc_resource(got[-1], container.id, init_pid)
        r = find(got[-1].request, "container.id", container.id)
        assert r is not None
        net = {(str(a["network.io.direction"]), str(a["network.interface.name"])): p.as_int
               for p in r.points("container.network.io") for a in [attrs(p.attributes)]}
        assert net[("receive", "eth0")] >= arrived * 1000  # UDP payload alone, headers on top
        assert ("transmit", "eth0") in net and ("receive", "lo") not in net
    check_cpu_against_kernel(got, busy.rel, sampler)
    check_monotonic_cumulative(got, busy.rel)
    assert got[0].headers["X-Scope-OrgID"] == "tenant-1"
    assert got[0].headers["Content-Type"] == "application/x-protobuf"
    assert got[0].headers["Content-Encoding"] == "gzip"
    assert "container_agent_otlp_sent_points_total" in metrics_text


#: (wall ns before the read, wall ns after it, usage_usec) readings of the kernel's counter.
Readings = list[tuple[int, int, int]]


@contextlib.contextmanager
def kernel_sampler(read: Callable[[], int], every_s: float = 0.02) -> Iterator[Readings]:
    """Read the kernel's counter every `every_s` in a thread, with the wall time around each
    read, so a pushed value can be compared with the kernel at the moment it was read."""
    readings: Readings = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            before = time.time_ns()
            value = read()
            readings.append((before, time.time_ns(), value))
            stop.wait(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield readings
    finally:
        stop.set()
        thread.join(5)


def check_cpu_against_kernel(got: list[Received], cgroup: str, readings: Readings) -> None:
    """container.cpu.time (user + system) is the kernel's usage_usec when the agent read it:
    between the test's own readings just before and just after that moment (the kernel adds
    a running task's time at scheduler ticks, so either side may lag by up to one tick, 10 ms
    at HZ=100), within one interval of them; and the counter read when the request arrived is
    ahead of it by no more than the busy loop (one core) could add since."""
    for rx in got:
        r = find(rx.request, "container_agent.cgroup", cgroup)
        assert r is not None
        (point,) = r.points("container.cpu.time")[:1]
        pushed_usec = r.value("container.cpu.time") * 1e6
        t = point.time_unix_nano
        before = [v for _, after_ns, v in readings if after_ns <= t]
        after = [v for before_ns, _, v in readings if before_ns >= t]
        assert before and after, "no kernel reading around the agent's read"
        assert before[-1] - TICK_USEC <= pushed_usec <= after[0] + TICK_USEC, (
            before[-1], pushed_usec, after[0])
        assert abs(pushed_usec - before[-1]) < 1e6, "more than one interval off the kernel"
        lag_usec = (rx.wall_ns - t) / 1e3
        assert -1 <= rx.probe - pushed_usec <= lag_usec + TICK_USEC, (
            rx.probe, pushed_usec, lag_usec)
        assert {attrs(p.attributes)["cpu.mode"] for p in r.points("container.cpu.time")} == {
            "user", "system"}


def check_monotonic_cumulative(got: list[Received], cgroup: str) -> None:
    seen: dict[str, list[tuple[int, int, float]]] = {}
    for rx in got:
        r = find(rx.request, "container_agent.cgroup", cgroup)
        assert r is not None
        m = r.metrics["container.cpu.time"]
        assert m.unit == "s" and m.sum.is_monotonic
        assert m.sum.aggregation_temporality == 2  # AGGREGATION_TEMPORALITY_CUMULATIVE
        for p in m.sum.data_points:
            mode = str(attrs(p.attributes)["cpu.mode"])
            seen.setdefault(mode, []).append(
                (p.start_time_unix_nano, p.time_unix_nano, p.as_double))
        assert not r.metrics["container.memory.usage"].sum.is_monotonic
    for mode, series in seen.items():
        assert len(series) == len(got), mode
        assert len({start for start, _, _ in series}) == 1, f"{mode}: start time moved"
        times = [t for _, t, _ in series]
        values = [v for _, _, v in series]
        assert times == sorted(times) and len(set(times)) == len(times), mode
        assert values == sorted(values), f"{mode} went backwards: {values}"
        assert series[0][0] <= series[0][1]
    assert seen["user"][-1][2] > seen["user"][0][2], "a busy loop's user time must grow"


def check_runc_resource(rx: Received, cid: str, init_pid: int) -> None:
    r = find(rx.request, "container.id", cid)
    assert r is not None
    a = r.attributes
    assert a["container.name"] == "nginx"
    assert a["container.runtime.name"] == "runc"
    assert a["container.image.name"] == "docker.io/library/nginx:1.27"
    assert a["k8s.pod.name"] == "web-7d9f"
    assert a["k8s.pod.uid"] == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert a["k8s.namespace.name"] == "shop"
    assert a["k8s.container.name"] == "nginx"
    assert a["host.name"] == socket.gethostname()
    assert a["deployment.environment"] == "test"
    assert a["container_agent.kind"] == "container"
    # Uptime from the container's start, as long as its init process has lived (the runtime
    # created it a moment before; psutil's boot time has whole seconds).
    stat = Path(f"/proc/{init_pid}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    alive_s = float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf(
        "SC_CLK_TCK")
    (uptime,) = r.points("container.uptime")
    assert 0 <= uptime.as_double <= alive_s + 2.0
    assert uptime.as_double >= alive_s - 2.0 - (time.time_ns() - uptime.time_unix_nano) / 1e9
    assert r.metrics["container.memory.usage"].unit == "By"
    assert r.value("container.memory.usage") > 0
    assert r.value("container_agent.pids.current") >= 1


def test_agentd_counts_dropped_points_when_receiver_is_down() -> None:
    from tests.conftest import IS_ROOT

    if not IS_ROOT:
        pytest.skip("needs root: agentd walks the cgroup tree")
    config = {"interval": 1, "otlp": {"endpoint": f"http://127.0.0.1:{free_port()}",
                                      "interval": 1, "retries": 1, "backoff": 0.05,
                                      "timeout": 2}}
    with running_agent(config, ready=False) as agent:
        agent.wait_ready(READY_S)

        def dropped() -> float:
            for line in agent.get_text("/metrics").splitlines():
                if line.startswith("container_agent_otlp_dropped_points_total "):
                    return float(line.split()[1])
            return 0.0

        assert agent.wait_for(lambda: dropped() > 0, 60)
        text = agent.get_text("/metrics")
        assert "container_agent_otlp_sent_points_total 0.0" in text
        failed = [ln for ln in text.splitlines()
                  if ln.startswith("container_agent_otlp_failed_requests_total ")]
        assert float(failed[0].split()[1]) >= 2  # first attempt and one retry
