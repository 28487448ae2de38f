"""agent.network: namespaces mapped to real runc containers and test cgroups, exact traffic
totals, shared and host-network namespaces, metrics, the JSON API, and no leaks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from agent.core.component import AgentContext
from agent.core.store import Store
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from agent.network.component import NetworkComponent, NetworkSnapshot, workload_network
from collectors.layout import detect_layout
from collectors.netns import pid_netns
from collectors.samples import CgroupSample
from tests.conftest import IS_ROOT
from tests.support.cgroups import CgroupFactory
from tests.support.netns import (
    UDP_OVERHEAD,
    NetnsFactory,
    TestNetns,
    children_of_self,
    open_fds,
)
from tests.support.runc import RuncContainer, RuncUnavailable, runc_container


@pytest.fixture
def nets() -> Iterator[NetnsFactory]:
    if not IS_ROOT:
        pytest.skip("needs root: creates network namespaces")
    with NetnsFactory() as factory:
        yield factory


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AgentContext]:
    store = Store(tmp_path / "state.db")
    try:
        yield AgentContext(config={"cadvisor": True, "network": {}}, state_dir=tmp_path,
                           layout=detect_layout(), store=store)
    finally:
        store.close()


@pytest.fixture
def comp(ctx: AgentContext) -> Iterator[NetworkComponent]:
    c = NetworkComponent()
    asyncio.run(c.start(ctx))
    try:
        yield c
    finally:
        asyncio.run(c.stop())


def identity(wid: str, cgroup: str, pid: int | None, with_ns: bool = True,
             kind: WorkloadKind = WorkloadKind.CONTAINER) -> WorkloadIdentity:
    key = pid_netns(pid) if pid and with_ns else None
    return WorkloadIdentity(
        id=wid, kind=kind, runtime="runc" if kind is WorkloadKind.CONTAINER else "",
        name=f"name-{wid[-6:]}", cgroup=cgroup, inode=1, init_pid=pid,
        namespaces=MappingProxyType({"net": key[1]}) if key else MappingProxyType({}),
    )


def snapshot(*idents: WorkloadIdentity, extras: object = None) -> Snapshot:
    host = HostInfo("h", "b", "m", "k", "hybrid", 2, 1 << 30, "0")
    now = time.monotonic_ns()
    states = {
        i.id: WorkloadState(i, CgroupSample(path=i.cgroup, inode=1, monotonic_ns=now,
                                            wall_ns=time.time_ns()))
        for i in idents
    }
    ex = MappingProxyType({"network": extras}) if extras is not None else MappingProxyType({})
    return Snapshot(1, time.time_ns(), now, 0, host, MappingProxyType(states), ex)


def cycle(comp: NetworkComponent, ctx: AgentContext, *idents: WorkloadIdentity
          ) -> tuple[NetworkSnapshot, Snapshot]:
    net = comp.collect(ctx, snapshot(*idents))
    assert isinstance(net, NetworkSnapshot)
    return net, snapshot(*idents, extras=net)


@pytest.fixture
def runc(cgroups: CgroupFactory) -> Iterator[list[object]]:
    """Context managers of started containers, exited (killed, deleted) at the end."""
    managers: list[object] = []
    yield managers
    for m in reversed(managers):
        m.__exit__(None, None, None)  # type: ignore[attr-defined]


def start(runc: list[object], cgroups: CgroupFactory, **kw: object) -> RuncContainer:
    cm = runc_container(cgroups, **kw)  # type: ignore[arg-type]
    try:
        c = cm.__enter__()
    except RuncUnavailable as e:
        pytest.skip(str(e))
    runc.append(cm)
    return c


def families(comp: NetworkComponent, snap: Snapshot) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for fam in comp.metric_families(snap):
        assert isinstance(fam, Metric)
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def iface(net: NetworkSnapshot, ino: int, name: str) -> object:
    return next(i for i in net.namespaces[ino].interfaces if i.name == name)


def test_runc_container_is_mapped_to_its_namespace_and_counted_exactly(
    comp: NetworkComponent, ctx: AgentContext, nets: NetnsFactory, cgroups: CgroupFactory,
    runc: list[object],
) -> None:
    c = start(runc, cgroups)
    cns = nets.attach(c.init_pid)
    outside = nets.create()
    # "Host side" stand-in: a test namespace with a bridge holding the veth peer.
    pair = nets.veth(outside, cns, "ca0", "eth0")
    outside.bridge("br0", "ca0")
    ident = identity(c.id, c.cgroup, c.init_pid)
    assert ident.namespaces["net"] == cns.ino
    net0, _ = cycle(comp, ctx, ident)
    assert net0.netns_by_workload[c.id] == cns.ino
    view = net0.namespaces[cns.ino]
    assert view.owner == c.id and [m.id for m in view.members] == [c.id]
    assert {i.name for i in view.interfaces} == {"lo", "eth0"}
    eth0 = iface(net0, cns.ino, "eth0")
    assert eth0.peer is not None  # type: ignore[attr-defined]
    assert eth0.peer.netns == outside.ino and eth0.peer.name == "ca0"  # type: ignore[attr-defined]
    assert eth0.peer.master == "br0"  # type: ignore[attr-defined]
    assert net0.namespaces[outside.ino].owner is None  # unmapped
    # Traffic both ways, plus loopback traffic inside the container that must not count.
    assert nets.send_udp(pair, 120, 800) == 120
    assert nets.send_udp(pair, 30, 64, reverse=True) == 30
    loopback_udp(cns, 5)
    net1, snap1 = cycle(comp, ctx, ident)
    rx0, tx0 = net0.totals_by_workload[c.id]
    rx1, tx1 = net1.totals_by_workload[c.id]
    assert (rx1 - rx0, tx1 - tx0) == (120 * (800 + UDP_OVERHEAD), 30 * (64 + UDP_OVERHEAD))
    lo = iface(net1, cns.ino, "lo")
    assert lo.stats.rx_packets >= 5  # type: ignore[attr-defined]  # loopback traffic happened
    # The same identity without namespace inodes is mapped through its init pid.
    net2, _ = cycle(comp, ctx, identity(c.id, c.cgroup, c.init_pid, with_ns=False))
    assert net2.netns_by_workload[c.id] == cns.ino
    # Metrics carry the container's labels; cAdvisor names with id = cgroup path.
    fam = families(comp, snap1)
    rx = [s for s in fam["container_agent_network_receive_bytes"]
          if s.labels["netns"] == str(cns.ino) and s.labels["interface"] == "eth0"]
    assert [s.labels["id"] for s in rx] == [c.id] and rx[0].labels["scope"] == "container"
    assert rx[0].value == eth0_stat(net1, cns.ino, "rx_bytes")
    tot = [s for s in fam["container_agent_network_workload_receive_bytes"]
           if s.labels["id"] == c.id]
    assert [s.value for s in tot] == [rx1]
    ca = [s for s in fam["container_network_receive_bytes"] if s.labels["id"] == c.cgroup]
    assert {s.labels["interface"]: s.value for s in ca} == {"eth0": rx[0].value}
    # JSON for /api/v1/containers/{id}: interfaces with counters and the peer.
    js = workload_network(net1, c.id)
    assert js["role"] == "owner" and js["rx_bytes"] == rx1 and js["tx_bytes"] == tx1
    names = {i["name"]: i for i in js["interfaces"]}  # type: ignore[attr-defined]
    assert names["eth0"]["peer_interface"] == "ca0" and names["eth0"]["peer_master"] == "br0"
    assert "ca0 in netns" in names["eth0"]["peer"] and names["eth0"]["rx_bytes"] == rx[0].value


def loopback_udp(ns: TestNetns, count: int) -> None:
    ns.ip("link", "set", "dev", "lo", "up")
    rx, tx = ns.socket(), ns.socket()
    try:
        rx.bind(("127.0.0.1", 40001))
        for _ in range(count):
            tx.sendto(b"y" * 100, ("127.0.0.1", 40001))
            rx.recv(1000)
    finally:
        rx.close()
        tx.close()


def eth0_stat(net: NetworkSnapshot, ino: int, field: str) -> int:
    return int(getattr(iface(net, ino, "eth0").stats, field))  # type: ignore[attr-defined]


def test_two_containers_sharing_a_namespace_are_counted_once(
    comp: NetworkComponent, ctx: AgentContext, nets: NetnsFactory, cgroups: CgroupFactory,
    runc: list[object],
) -> None:
    sandbox = start(runc, cgroups)
    time.sleep(0.02)  # distinct start times: the sandbox is older
    app = start(runc, cgroups, share_netns_with_pid=sandbox.init_pid)
    cns = nets.attach(sandbox.init_pid)
    pair = nets.veth(nets.create(), cns, "ca0", "eth0")
    a, b = identity(sandbox.id, sandbox.cgroup, sandbox.init_pid), identity(
        app.id, app.cgroup, app.init_pid)
    assert a.namespaces["net"] == b.namespaces["net"] == cns.ino
    net0, _ = cycle(comp, ctx, b, a)
    assert nets.send_udp(pair, 40, 500) == 40
    net1, snap1 = cycle(comp, ctx, b, a)
    view = net1.namespaces[cns.ino]
    assert [(m.id, m.role) for m in view.members] == [(sandbox.id, "owner"), (app.id, "member")]
    assert view.owner == sandbox.id
    assert sandbox.id in net1.totals_by_workload and app.id not in net1.totals_by_workload
    assert net1.totals_by_workload[sandbox.id][0] - net0.totals_by_workload[sandbox.id][0] == (
        40 * (500 + UDP_OVERHEAD))
    fam = families(comp, snap1)
    eth0 = [s for s in fam["container_agent_network_receive_bytes"]
            if s.labels["netns"] == str(cns.ino) and s.labels["interface"] == "eth0"]
    assert len(eth0) == 1 and eth0[0].labels["id"] == sandbox.id  # one series, not two
    members = {(s.labels["id"], s.labels["role"]) for s in fam[
        "container_agent_network_namespace_member"] if s.labels["netns"] == str(cns.ino)}
    assert members == {(sandbox.id, "owner"), (app.id, "member")}
    assert [s.labels["id"] for s in fam["container_network_receive_bytes"]
            if s.labels["id"] in (sandbox.cgroup, app.cgroup)] == [sandbox.cgroup]
    js = workload_network(net1, app.id)
    assert js["role"] == "member" and js["counted_on"] == sandbox.id and js["rx_bytes"] is None
    assert js["shared"] is True and js["members"] == [sandbox.id, app.id]


def test_host_network_container_is_marked_and_gets_no_host_traffic(
    comp: NetworkComponent, ctx: AgentContext, cgroups: CgroupFactory, runc: list[object],
) -> None:
    c = start(runc, cgroups, own_netns=False)
    ident = identity(c.id, c.cgroup, c.init_pid)
    # A service on the host network too: marked, but not listed in the metrics.
    svc = identity("svc.service", "/system.slice/svc.service", os.getpid(),
                   kind=WorkloadKind.SERVICE)
    net, snap = cycle(comp, ctx, ident, svc)
    assert net.host_network == {c.id, svc.id}
    assert workload_network(net, svc.id)["role"] == "host_network"
    assert c.id not in net.totals_by_workload
    host = net.namespaces[net.host_netns]  # type: ignore[index]
    assert host.is_host and host.owner is None
    assert [(m.id, m.role) for m in host.members] == [
        (c.id, "host_network"), (svc.id, "host_network")]
    js = workload_network(net, c.id)
    assert js["role"] == "host_network" and js["interfaces"] == []
    fam = families(comp, snap)
    assert [s.labels["id"] for s in fam["container_agent_network_host_network"]] == [c.id]
    assert [s.labels["id"] for s in fam["container_agent_network_namespace_member"]
            if s.labels["netns"] == str(net.host_netns)] == [c.id]
    for name in ("container_agent_network_receive_bytes", "container_network_receive_bytes",
                 "container_agent_network_workload_receive_bytes"):
        assert not [s for s in fam[name] if s.labels["id"] in (c.id, c.cgroup)]
    host_series = [s for s in fam["container_agent_network_receive_bytes"]
                   if s.labels["netns"] == str(net.host_netns)]
    assert host_series and {s.labels["scope"] for s in host_series} == {"host"}


def test_cgroup_workload_is_mapped_through_its_process(
    comp: NetworkComponent, ctx: AgentContext, nets: NetnsFactory, cgroups: CgroupFactory,
) -> None:
    ns = nets.create()
    peer = nets.create()
    nets.veth(ns, peer)
    cg = cgroups.create()
    proc = cg.spawn(["ip", "netns", "exec", ns.name, "sleep", "30"])
    for _ in range(250):
        if pid_netns(proc.pid) == ns.key:
            break
        time.sleep(0.02)
    ident = identity(cg.rel, cg.rel, proc.pid, with_ns=False, kind=WorkloadKind.CGROUP)
    net, _ = cycle(comp, ctx, ident)
    assert net.netns_by_workload[cg.rel] == ns.ino
    assert net.namespaces[ns.ino].owner == cg.rel
    assert net.namespaces[ns.ino].names == (ns.name,)
    assert cg.rel in net.totals_by_workload
    cg.stop_processes()


def test_api_route_lists_namespaces_with_members_and_interfaces(
    comp: NetworkComponent, ctx: AgentContext, nets: NetnsFactory,
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    a, b = nets.create(), nets.create()
    nets.veth(a, b)
    latest: list[Snapshot] = []
    ctx.latest = lambda: latest[-1] if latest else None

    async def run() -> None:
        app = web.Application()
        app.add_routes(comp.routes())
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/api/v1/network")
            assert r.status == 503 and "error" in await r.json()
            _net, snap = cycle(comp, ctx)
            latest.append(snap)
            r = await client.get("/api/v1/network")
            assert r.status == 200
            body = await r.json()
            inos = [n["netns"] for n in body["namespaces"]]
            assert a.ino in inos and b.ino in inos and body["namespaces"][0]["host"] is True
            r = await client.get("/api/v1/network", params={"netns": a.name})
            (one,) = (await r.json())["namespaces"]
            assert one["names"] == [a.name] and one["members"] == []
            ca0 = next(i for i in one["interfaces"] if i["name"] == "ca0")
            assert ca0["kind"] == "veth" and ca0["peer_netns"] == b.ino
            assert ca0["peer_interface"] == "ca1"

    asyncio.run(run())


def test_namespaces_come_and_go_while_the_component_runs(
    ctx: AgentContext, nets: NetnsFactory,
) -> None:
    # Other tests on this host may add namespaces meanwhile: the invariant checked is "one
    # open fd per readable namespace and nothing else", and zero extra fds after stop().
    fds0, kids0, threads0 = open_fds(), children_of_self(), threading.active_count()
    comp = NetworkComponent()
    asyncio.run(comp.start(ctx))

    def readable(net: NetworkSnapshot) -> int:
        return sum(1 for n in net.namespaces.values() if n.error is None)

    try:
        cycle(comp, ctx)
        for _round in range(3):
            made = [nets.create() for _ in range(4)]
            nets.veth(made[0], made[1])
            nets.veth(made[2], made[3])
            net, snap = cycle(comp, ctx)
            assert all(net.namespaces[m.ino].error is None for m in made)
            assert net.open_sockets == comp.open_sockets == readable(net)
            assert len(open_fds()) == len(fds0) + comp.open_sockets
            fam = families(comp, snap)
            assert fam["container_agent_network_netlink_sockets"][0].value == net.open_sockets
            for m in made:
                nets.delete(m)
            net, _ = cycle(comp, ctx)
            assert not any(m.ino in net.namespaces for m in made)
            assert net.open_sockets == comp.open_sockets == readable(net)
            assert len(open_fds()) == len(fds0) + comp.open_sockets
        assert children_of_self() == kids0 and threading.active_count() == threads0
    finally:
        asyncio.run(comp.stop())
    assert comp.open_sockets == 0
    assert open_fds() == fds0  # every netlink socket closed at stop()


def test_disabled_component_collects_nothing(ctx: AgentContext) -> None:
    comp = NetworkComponent(proc_root=Path("/nonexistent"), netns_dirs=())
    ctx.config = {"network": {"enabled": False}}
    assert comp.collect(ctx, snapshot()) is None
    ctx.config = {"network": {"enabled": True}}
    net = comp.collect(ctx, snapshot())  # enabled: bogus roots find no namespace
    assert isinstance(net, NetworkSnapshot) and not net.namespaces
    asyncio.run(comp.stop())


@pytest.mark.parametrize(("text", "error"), [
    ("[network]\nlink_refresh = 0", "network.link_refresh: must be > 0 (got 0)"),
    ('[network]\nnetns_dirs = ["/run/netns", 3]',
     "network.netns_dirs: must be a list of absolute directory paths (got ['/run/netns', 3])"),
    ("[network]\nenabled = 1", "network.enabled: expected true or false, got int"),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, text: str, error: str) -> None:
    from agent.core.config import ConfigError, load_config

    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [NetworkComponent()])
    assert str(e.value) == error
    cfg.write_text("[network]\nlink_refresh = 5\nnetns_dirs = []\n")
    assert load_config(cfg, [NetworkComponent()])["network"]["link_refresh"] == 5


def test_agentd_end_to_end_metrics_api_and_agentctl_show(
    nets: NetnsFactory, cgroups: CgroupFactory, runc: list[object],
) -> None:
    """The real daemon discovers a runc container; its traffic shows in /metrics (both
    namings), /api/v1/network, and `agentctl show` lists its interfaces with the peer."""
    from tests.support.agentd import running_agent

    c = start(runc, cgroups)
    cns = nets.attach(c.init_pid)
    pair = nets.veth(nets.create(), cns, "ca0", "eth0")
    assert nets.send_udp(pair, 300, 1000) == 300
    want = 300 * (1000 + UDP_OVERHEAD)
    with running_agent({"cadvisor": True}) as agent:

        def counted() -> bool:
            net = agent.get("/api/v1/network")
            ns = [n for n in net["namespaces"] if n["netns"] == cns.ino]
            return bool(ns and ns[0]["owner"] == c.id and any(
                i["name"] == "eth0" and i["rx_bytes"] == want for i in ns[0]["interfaces"]))

        agent.wait_for(counted, timeout=60)
        from prometheus_client.parser import text_string_to_metric_families

        samples = [s for f in text_string_to_metric_families(agent.get_text("/metrics"))
                   for s in f.samples]
        mine = [s for s in samples if s.name == "container_agent_network_receive_bytes_total"
                and s.labels.get("netns") == str(cns.ino) and s.labels["interface"] == "eth0"]
        assert [(s.labels["id"], s.labels["scope"], s.value) for s in mine] == [
            (c.id, "container", want)]
        ca = [s for s in samples if s.name == "container_network_receive_bytes_total"
              and s.labels.get("id") == c.cgroup]
        assert [(s.labels["interface"], s.value) for s in ca] == [("eth0", want)]
        shown = agent.agentctl("show", c.id)
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if x.startswith("net eth0:"))
        assert "peer ca0 in netns" in line


def test_host_side_peer_is_described_with_its_bridge() -> None:
    # A veth whose peer is in the host's namespace cannot be made here (tests never touch the
    # host's network), so this checks the wording from a hand-built PeerRef.
    from agent.network.component import PeerRef
    from agent.network.metrics import peer_text

    names = {4026532999: ("ca-test-x",)}
    assert peer_text(PeerRef(4026531833, 57, "veth1a2b", "docker0", True), names) == (
        "veth1a2b in host netns, bridge docker0")
    assert peer_text(PeerRef(4026532999, 2, "ca1", None, False), names) == (
        "ca1 in netns 4026532999 (ca-test-x)")
    assert peer_text(PeerRef(4026532998, 3, "ca2", "br0", False), names) == (
        "ca2 in netns 4026532998, bridge br0")
    assert peer_text(None, names) is None
