"""collectors.netns / collectors.rtnetlink against real namespaces, veths and traffic."""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.netns import (
    NetnsCollector,
    NetnsSample,
    find_namespaces,
    host_netns,
    pid_netns,
)
from collectors.rtnetlink import OPERSTATES, LinkAttrs, parse_link, parse_stats
from tests.conftest import IS_ROOT
from tests.support.netns import (
    UDP_OVERHEAD,
    NetnsFactory,
    TestNetns,
    children_of_self,
    open_fds,
)

root = pytest.mark.skipif(not IS_ROOT, reason="needs root: creates network namespaces")


@pytest.fixture
def nets() -> Iterator[NetnsFactory]:
    if not IS_ROOT:
        pytest.skip("needs root: creates network namespaces")
    with NetnsFactory() as factory:
        yield factory


@pytest.fixture
def collector() -> Iterator[NetnsCollector]:
    c = NetnsCollector()
    try:
        yield c
    finally:
        c.close()


def iface(sample: NetnsSample, name: str) -> LinkAttrs:
    for i in sample.interfaces:
        if i.name == name:
            return i.attrs
    raise AssertionError(f"{name} not in {[i.name for i in sample.interfaces]}")


def counters(c: NetnsCollector, ns: TestNetns, name: str) -> tuple[int, int, int, int]:
    """(rx_bytes, rx_packets, tx_bytes, tx_packets) of one interface, from a fresh cycle."""
    sample = c.collect().namespaces[ns.key]
    for i in sample.interfaces:
        if i.name == name:
            assert i.stats is not None
            return i.stats.rx_bytes, i.stats.rx_packets, i.stats.tx_bytes, i.stats.tx_packets
    raise AssertionError(name)


@root
def test_finds_named_process_and_host_namespaces(nets: NetnsFactory) -> None:
    named = nets.create()
    # A namespace that only a process holds (no name): unshare execs sleep in its own pid.
    proc = nets.spawn(["unshare", "--net", "sleep", "30"])
    host = host_netns()
    for _ in range(250):
        anon = pid_netns(proc.pid)
        if anon is not None and anon != host:
            break
        time.sleep(0.02)
    refs, found_host = find_namespaces()
    assert anon is not None and anon != host and anon != named.key
    assert proc.pid in refs[anon].pids and refs[anon].names == () and not refs[anon].is_host
    assert refs[named.key].names == (named.name,) and refs[named.key].pids == ()
    assert not refs[named.key].is_host
    own = os.stat("/proc/self/ns/net")
    assert found_host == host == (own.st_dev, own.st_ino)  # pid 1's is EACCES here: self stands in
    assert refs[host].is_host and os.getpid() in refs[host].pids


@root
def test_interface_metadata_matches_iproute2(nets: NetnsFactory, collector: NetnsCollector) -> None:
    a, b = nets.create(), nets.create()
    nets.veth(a, b, "ca0", "ca1", mtu=1400)
    b.bridge("br0", "ca1")
    a.ip("tuntap", "add", "mode", "tun", "name", "tun0")
    # Operational state settles asynchronously (linkwatch): accept iproute2's before or after.
    before = {ns.key: {str(x["ifname"]): x["operstate"] for x in _all(ns)} for ns in (a, b)}
    scan = collector.collect()
    for ns in (a, b):
        sample = scan.namespaces[ns.key]
        assert sample.error is None
        for i in sample.interfaces:
            want = ns.link(i.name)
            assert i.attrs.index == want["ifindex"]
            assert i.attrs.mtu == want["mtu"]
            states = {str(before[ns.key][i.name]).lower(), str(want["operstate"]).lower()}
            assert i.attrs.operstate in states
            assert i.attrs.mac == want.get("address")
            info = want.get("linkinfo")
            kind = info.get("info_kind") if isinstance(info, dict) else None
            assert i.attrs.kind == kind
            assert i.attrs.master_index == _index_of(ns, want.get("master"))
        assert {i.name for i in sample.interfaces} == {str(x["ifname"]) for x in _all(ns)}
    ca0, ca1, br0 = iface(scan.namespaces[a.key], "ca0"), *(
        iface(scan.namespaces[b.key], n) for n in ("ca1", "br0")
    )
    assert (ca0.kind, ca1.kind, br0.kind) == ("veth", "veth", "bridge")
    assert iface(scan.namespaces[a.key], "tun0").kind == "tun"
    assert ca1.master_index == br0.index
    assert ca0.link_index == ca1.index and ca1.link_index == ca0.index
    assert ca0.link_netnsid is not None and ca1.link_netnsid is not None


def _all(ns: TestNetns) -> list[dict[str, object]]:
    import json

    out: list[dict[str, object]] = json.loads(ns.ip("-j", "link", "show").stdout)
    return out


def _index_of(ns: TestNetns, name: object) -> int | None:
    if name is None:
        return None
    return int(str(ns.link(str(name))["ifindex"]))


@root
def test_veth_peers_resolve_across_namespaces_even_with_equal_ifindexes(
    nets: NetnsFactory, collector: NetnsCollector
) -> None:
    # Fresh namespaces all number their first veth 2: ifindex alone cannot say who the peer is.
    hub = nets.create()
    spokes = [nets.create() for _ in range(4)]
    for n, s in enumerate(spokes):
        nets.veth(hub, s, f"h{n}", "eth0")
    scan = collector.collect()
    hub_sample = scan.namespaces[hub.key]
    for n, s in enumerate(spokes):
        h = next(i for i in hub_sample.interfaces if i.name == f"h{n}")
        e = next(i for i in scan.namespaces[s.key].interfaces if i.name == "eth0")
        assert e.attrs.index == 2
        assert h.link_netns == s.key and h.attrs.link_index == e.attrs.index
        assert e.link_netns == hub.key and e.attrs.link_index == h.attrs.index
    lo = next(i for i in hub_sample.interfaces if i.name == "lo")
    assert lo.link_netns is None
    # Cached: the next cycle asks the kernel nothing more.
    assert collector.collect().nsid_queries == 0


@root
@pytest.mark.parametrize(("count", "payload"), [(200, 1000), (37, 1)])
def test_counters_match_udp_traffic(
    nets: NetnsFactory, collector: NetnsCollector, count: int, payload: int
) -> None:
    a, b = nets.create(), nets.create()
    pair = nets.veth(a, b)
    before_a = counters(collector, a, "ca0")
    before_b = counters(collector, b, "ca1")
    before_lo = counters(collector, a, "lo")
    assert nets.send_udp(pair, count, payload) == count
    back = count // 4 + 1
    assert nets.send_udp(pair, back, payload + 100, reverse=True) == back
    after_a = counters(collector, a, "ca0")
    after_b = counters(collector, b, "ca1")
    frame, frame_back = payload + UDP_OVERHEAD, payload + 100 + UDP_OVERHEAD
    # (rx_bytes, rx_packets, tx_bytes, tx_packets): exactly what was sent, nothing else.
    assert tuple(x - y for x, y in zip(after_a, before_a, strict=True)) == (
        back * frame_back, back, count * frame, count,
    )
    assert tuple(x - y for x, y in zip(after_b, before_b, strict=True)) == (
        count * frame, count, back * frame_back, back,
    )
    assert counters(collector, a, "lo") == before_lo


@root
def test_stats_dump_link_dump_and_pyroute2_agree(nets: NetnsFactory) -> None:
    from pyroute2 import IPRoute

    from collectors.rtnetlink import RtnlHandle, new_route_socket

    a, b = nets.create(), nets.create()
    pair = nets.veth(a, b)
    nets.send_udp(pair, 50, 700)
    nets.send_udp(pair, 20, 90, reverse=True)
    h = RtnlHandle(a.run(new_route_socket))
    try:
        by_stats = dict(h.stats())
        links = h.links()
    finally:
        h.close()
    with IPRoute(netns=a.name) as ipr:
        ref = {m["index"]: m for m in ipr.get_links()}
    assert by_stats.keys() == {x.index for x in links} == ref.keys()
    for x in links:
        theirs = ref[x.index].get_attr("IFLA_STATS64")
        assert x.stats is not None
        mine = x.stats._asdict()
        assert {k: mine[k] for k in theirs} == dict(theirs)
        # The link dump (pyroute2's decoder) stops at tx_compressed; the stats dump has all.
        assert by_stats[x.index][:23] == x.stats[:23]
        assert x.stats.rx_nohandler is None and by_stats[x.index].rx_nohandler is not None
        assert x.name == ref[x.index].get_attr("IFLA_IFNAME")
        assert x.mtu == ref[x.index].get_attr("IFLA_MTU")
        assert x.mac == ref[x.index].get_attr("IFLA_ADDRESS")
        assert x.operstate == ref[x.index].get_attr("IFLA_OPERSTATE").lower()
    ca0 = next(x for x in links if x.name == "ca0")
    assert ca0.stats is not None and ca0.stats.tx_packets == 50


@root
def test_link_change_is_seen_next_cycle(nets: NetnsFactory, collector: NetnsCollector) -> None:
    a, b = nets.create(), nets.create()
    nets.veth(a, b)
    collector.collect()
    quiet = collector.collect()
    assert quiet.link_dumps == 0  # nothing changed: counters only
    a.ip("link", "set", "dev", "ca0", "mtu", "1280")
    b.ip("link", "set", "dev", "ca1", "down")
    scan = collector.collect()
    assert iface(scan.namespaces[a.key], "ca0").mtu == 1280
    assert iface(scan.namespaces[b.key], "ca1").operstate == "down"
    a.ip("link", "set", "dev", "ca0", "name", "renamed0")
    scan = collector.collect()
    assert {i.name for i in scan.namespaces[a.key].interfaces} == {"lo", "renamed0"}


@root
def test_namespaces_come_and_go_without_leaks(nets: NetnsFactory) -> None:
    # Other tests on this host may add namespaces meanwhile: the invariant checked is "one
    # open fd per readable namespace and nothing else", and no fd at all after close().
    # No collection meanwhile: it could close an earlier test's garbage fds (a count that
    # fell by 3 once failed CI).
    gc.collect()
    gc.disable()
    fds0, kids0, threads0 = open_fds(), children_of_self(), threading.active_count()
    c = NetnsCollector()
    try:
        c.collect()
        for _round in range(4):
            made = [nets.create() for _ in range(3)]
            nets.veth(made[0], made[1])
            scan = c.collect()
            assert scan.opened >= 3 and all(scan.namespaces[m.key].error is None for m in made)
            readable = [k for k, s in scan.namespaces.items() if s.error is None]
            assert c.open_handles == len(readable)
            assert len(open_fds()) == len(fds0) + c.open_handles
            for m in made:
                nets.delete(m)
            scan = c.collect()
            assert scan.closed >= 3 and not any(m.key in scan.namespaces for m in made)
            readable = [k for k, s in scan.namespaces.items() if s.error is None]
            assert c.open_handles == len(readable)
            assert len(open_fds()) == len(fds0) + c.open_handles
        assert children_of_self() == kids0
        assert threading.active_count() == threads0
    finally:
        c.close()
        gc.enable()
    assert open_fds() == fds0


@root
def test_close_releases_every_socket(nets: NetnsFactory) -> None:
    gc.collect()
    fds0 = open_fds()
    c = NetnsCollector()
    nets.create()
    c.collect()
    assert c.open_handles >= 2 and len(open_fds()) > len(fds0)
    c.close()
    assert open_fds() == fds0 and c.open_handles == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_fail_only_with_the_errors_the_request_loop_catches(data: bytes) -> None:
    for parse in (parse_link, parse_stats):
        # RtnlHandle._request turns these into OSError(EPROTO); anything else would escape.
        with contextlib.suppress(struct.error, IndexError, ValueError):
            parse(data, 0, len(data))


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(1, 2**31 - 1),
    name=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15),
    mtu=st.integers(0, 2**32 - 1),
    link=st.integers(1, 2**31 - 1),
    nsid=st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    master=st.one_of(st.none(), st.integers(1, 2**31 - 1)),
    operstate=st.integers(0, 6),
    kind=st.sampled_from(["veth", "bridge", "tun", "macvlan"]),
    stats=st.lists(st.integers(0, 2**64 - 1), min_size=23, max_size=23),
)
def test_parse_link_decodes_what_pyroute2_encodes(
    index: int, name: str, mtu: int, link: int, nsid: int | None, master: int | None,
    operstate: int, kind: str, stats: list[int],
) -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    fields = ifinfmsg.ifstats64.fields
    attrs: list[tuple[str, object]] = [
        ("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_LINK", link),
        ("IFLA_OPERSTATE", OPERSTATES[operstate].upper()),
        ("IFLA_ADDRESS", "02:00:00:00:00:01"),
        ("IFLA_STATS64", {f[0]: v for f, v in zip(fields, stats, strict=True)}),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}),
    ]
    if nsid is not None:
        attrs.append(("IFLA_LINK_NETNSID", nsid))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = attrs
    msg.encode()
    data = bytes(msg.data)
    got = parse_link(data, 16, len(data))
    assert (got.index, got.name, got.mtu, got.kind) == (index, name, mtu, kind)
    assert got.operstate == OPERSTATES[operstate] and got.mac == "02:00:00:00:00:01"
    assert got.link_netnsid == nsid and got.master_index == master
    assert got.link_index == (None if link == index and nsid is None else link)
    assert got.stats is not None and list(got.stats)[:23] == stats


def test_names_that_are_not_namespaces_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "leftover").write_text("")  # what a failed `ip netns add` leaves behind
    refs, host = find_namespaces(netns_dirs=[tmp_path])
    assert all(not r.names for r in refs.values())
    assert host in refs


def test_a_namespace_that_cannot_be_opened_is_retried_after_refresh_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collectors.netns as netns_mod

    # A fake /proc whose pid 1 "net" link is a UTS namespace: nsfs, but setns(NEWNET) refuses.
    (tmp_path / "1" / "ns").mkdir(parents=True)
    (tmp_path / "1" / "ns" / "net").symlink_to("/proc/self/ns/uts")
    calls: list[int] = []
    real = netns_mod.run_in_namespaces

    def counting(requests, make):  # type: ignore[no-untyped-def]
        calls.append(len(requests))
        return real(requests, make)

    monkeypatch.setattr(netns_mod, "run_in_namespaces", counting)
    now = [100.0]
    c = NetnsCollector(proc_root=tmp_path, netns_dirs=[], refresh_s=30.0, clock=lambda: now[0])
    try:
        scan = c.collect()
        (sample,) = scan.namespaces.values()
        assert sample.ref.is_host and sample.error == "Invalid argument" and calls == [1]
        now[0] += 10
        assert c.collect().namespaces[sample.ref.key].error == "Invalid argument"
        assert calls == [1]  # not retried yet
        now[0] += 25
        c.collect()
        assert calls == [1, 1] and c.open_handles == 0
    finally:
        c.close()
