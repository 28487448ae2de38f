"""Prometheus families and JSON from a NetworkSnapshot (never from the kernel).

Per namespace and interface (every namespace, the host's included):
  container_agent_network_{receive,transmit}_{bytes,packets,errors,packets_dropped}_total,
  container_agent_network_receive_multicast_packets_total
    {netns, interface, scope, id, name, runtime}; scope is container (id/name/runtime of the
    namespace's owner), host (id "/"), or unmapped (a namespace no workload uses).
  container_agent_network_interface_info{netns, interface, kind, mac, operstate, master,
    peer_netns, peer_interface} 1, container_agent_network_interface_up, ..._mtu_bytes.
Per namespace: container_agent_network_namespace_member{netns, id, name, runtime, role} 1.
Agent: container_agent_network_namespaces, container_agent_network_netlink_sockets.
Per workload (workload labels): container_agent_network_workload_{receive,transmit}_bytes_total
  (owners only: a shared namespace is counted once); container_agent_network_host_network 1 for
  containers on the host's namespace (services are too, and are not listed).
cAdvisor mode: container_network_{receive,transmit}_{bytes,packets,packets_dropped,errors}_total
  {cAdvisor labels, interface} for each owner's non-loopback interfaces and for "/" (the host).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.exporters.metrics import LABELS, label_value, workload_labels
from agent.model.snapshot import Snapshot, WorkloadKind
from agent.network.component import IFF_UP, InterfaceView, NamespaceView, NetworkSnapshot, PeerRef

IFACE_LABELS = ["netns", "interface", "scope", "id", "name", "runtime"]
#: (metric name, LinkStats field, help)
COUNTERS = (
    ("container_agent_network_receive_bytes_total", "rx_bytes", "Bytes received by the interface"),
    ("container_agent_network_transmit_bytes_total",
     "tx_bytes", "Bytes transmitted by the interface"),
    ("container_agent_network_receive_packets_total", "rx_packets", "Packets received"),
    ("container_agent_network_transmit_packets_total", "tx_packets", "Packets transmitted"),
    ("container_agent_network_receive_errors_total", "rx_errors", "Receive errors"),
    ("container_agent_network_transmit_errors_total", "tx_errors", "Transmit errors"),
    ("container_agent_network_receive_packets_dropped_total",
     "rx_dropped", "Received packets dropped"),
    ("container_agent_network_transmit_packets_dropped_total",
     "tx_dropped", "Packets dropped on transmit"),
    ("container_agent_network_receive_multicast_packets_total",
     "multicast", "Multicast packets received"),
)
CADVISOR = (
    ("container_network_receive_bytes_total", "rx_bytes", "Cumulative count of bytes received"),
    ("container_network_transmit_bytes_total", "tx_bytes",
     "Cumulative count of bytes transmitted"),
    ("container_network_receive_packets_total", "rx_packets",
     "Cumulative count of packets received"),
    ("container_network_transmit_packets_total", "tx_packets",
     "Cumulative count of packets transmitted"),
    ("container_network_receive_packets_dropped_total", "rx_dropped",
     "Cumulative count of packets dropped while receiving"),
    ("container_network_transmit_packets_dropped_total", "tx_dropped",
     "Cumulative count of packets dropped while transmitting"),
    ("container_network_receive_errors_total", "rx_errors",
     "Cumulative count of errors encountered while receiving"),
    ("container_network_transmit_errors_total", "tx_errors",
     "Cumulative count of errors encountered while transmitting"),
)


def scope_labels(ns: NamespaceView) -> list[str]:
    """[scope, id, name, runtime] of a namespace's series."""
    if ns.is_host:
        return ["host", "/", "", ""]
    owner = ns.members[0] if ns.owner is not None else None
    if owner is None:
        return ["unmapped", "", "", ""]
    return ["container", label_value(owner.id), label_value(owner.name), owner.runtime]


def metric_families(net: NetworkSnapshot, snapshot: Snapshot, cadvisor: bool) -> Iterator[Metric]:
    counters = {
        field: CounterMetricFamily(name, doc, labels=IFACE_LABELS)
        for name, field, doc in COUNTERS
    }
    info = GaugeMetricFamily(
        "container_agent_network_interface_info", "Interface facts (value 1)",
        labels=["netns", "interface", "kind", "mac", "operstate", "master", "peer_netns",
                "peer_interface"])
    up = GaugeMetricFamily("container_agent_network_interface_up",
                           "1 when the interface's operstate is up",
                           labels=["netns", "interface"])
    mtu = GaugeMetricFamily("container_agent_network_interface_mtu_bytes", "Interface MTU",
                            labels=["netns", "interface"])
    member = GaugeMetricFamily(
        "container_agent_network_namespace_member",
        "Workloads using a network namespace (value 1); role is owner "
        "(traffic counted on it), member or host_network",
        labels=["netns", "id", "name", "runtime", "role"])
    for ino, ns in net.namespaces.items():
        netns = str(ino)
        scope = scope_labels(ns)
        for m in ns.members:
            if m.role == "host_network" and m.kind != "container":
                continue  # every service is on the host network: only containers are news
            member.add_metric([netns, label_value(m.id), label_value(m.name), m.runtime, m.role],
                              1)
        for i in ns.interfaces:
            name = label_value(i.name)
            if i.stats is not None:
                lv = [netns, name, *scope]
                for field, fam in counters.items():
                    value = getattr(i.stats, field)
                    if value is not None:
                        fam.add_metric(lv, value)
            peer = i.peer
            info.add_metric([netns, name, i.kind or "", i.mac or "", i.operstate, i.master or "",
                             str(peer.netns) if peer else "", peer.name if peer else ""], 1)
            up.add_metric([netns, name], 1 if i.operstate == "up" else 0)
            if i.mtu is not None:
                mtu.add_metric([netns, name], i.mtu)
    sockets = GaugeMetricFamily("container_agent_network_netlink_sockets",
                                "Netlink sockets the agent holds, one per readable namespace")
    sockets.add_metric([], net.open_sockets)
    namespaces = GaugeMetricFamily("container_agent_network_namespaces", "Network namespaces found")
    namespaces.add_metric([], len(net.namespaces))
    yield from counters.values()
    yield from (info, up, mtu, member, sockets, namespaces)
    yield from _workload_families(net, snapshot)
    if cadvisor:
        yield from _cadvisor_families(net, snapshot)


def _workload_families(net: NetworkSnapshot, snapshot: Snapshot) -> Iterator[Metric]:
    rx = CounterMetricFamily("container_agent_network_workload_receive_bytes_total",
                             "Bytes received by the workload's namespace, loopback excluded; a "
                             "shared namespace is counted on its owner only", labels=LABELS)
    tx = CounterMetricFamily("container_agent_network_workload_transmit_bytes_total",
                             "Bytes transmitted by the workload's namespace, loopback excluded",
                             labels=LABELS)
    host = GaugeMetricFamily("container_agent_network_host_network",
                             "1 for workloads on the host's network namespace (no traffic is "
                             "attributed to them)", labels=LABELS)
    for wid, (r, t) in net.totals_by_workload.items():
        w = snapshot.workloads.get(wid)
        if w is not None:
            lv = workload_labels(w)
            rx.add_metric(lv, r)
            tx.add_metric(lv, t)
    for wid in sorted(net.host_network):
        w = snapshot.workloads.get(wid)
        if w is not None and w.identity.kind is WorkloadKind.CONTAINER:
            host.add_metric(workload_labels(w), 1)
    yield from (rx, tx, host)


def _cadvisor_families(net: NetworkSnapshot, snapshot: Snapshot) -> Iterator[Metric]:
    from agent.exporters.cadvisor import LABELS as CA_LABELS
    from agent.exporters.cadvisor import cadvisor_labels

    fams = {field: CounterMetricFamily(name, doc, labels=[*CA_LABELS, "interface"])
            for name, field, doc in CADVISOR}
    for ns in net.namespaces.values():
        if ns.is_host:
            lv = ["/", "", "", "", "", ""]
        elif ns.owner is not None and ns.owner in snapshot.workloads:
            lv = cadvisor_labels(snapshot.workloads[ns.owner])
        else:
            continue
        for i in ns.interfaces:
            if i.loopback or i.stats is None:
                continue
            for field, fam in fams.items():
                fam.add_metric([*lv, label_value(i.name)], getattr(i.stats, field))
    yield from fams.values()


# -- JSON -----------------------------------------------------------------------------------


def peer_text(peer: PeerRef | None, names: Mapping[int, tuple[str, ...]]) -> str | None:
    """"veth1a2b in host netns, bridge docker0" / "ca1 in netns 4026532177 (ca-test-x)"."""
    if peer is None:
        return None
    if peer.host:
        where = "host netns"
    else:
        label = names.get(peer.netns) or ()
        where = f"netns {peer.netns}" + (f" ({label[0]})" if label else "")
    return f"{peer.name} in {where}" + (f", bridge {peer.master}" if peer.master else "")


def interface_json(i: InterfaceView, names: Mapping[int, tuple[str, ...]]) -> dict[str, object]:
    s = i.stats
    out: dict[str, object] = {
        "name": i.name,
        "ifindex": i.ifindex,
        "kind": i.kind,
        "mac": i.mac,
        "mtu": i.mtu,
        "operstate": i.operstate,
        "admin_up": bool(i.flags & IFF_UP),
        "master": i.master,
        "peer": peer_text(i.peer, names),
        "peer_netns": i.peer.netns if i.peer else None,
        "peer_interface": i.peer.name if i.peer else None,
        "peer_ifindex": i.peer.ifindex if i.peer else None,
        "peer_master": i.peer.master if i.peer else None,
    }
    for field in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors",
                  "rx_dropped", "tx_dropped", "multicast"):
        out[field] = getattr(s, field) if s is not None else None
    return out


def namespace_json(ns: NamespaceView, names: Mapping[int, tuple[str, ...]]) -> dict[str, object]:
    return {
        "netns": ns.ino,
        "names": list(ns.names),
        "host": ns.is_host,
        "owner": ns.owner,
        "members": [{"id": m.id, "name": m.name, "runtime": m.runtime, "cgroup": m.cgroup,
                     "kind": m.kind, "role": m.role} for m in ns.members],
        "processes": ns.processes,
        "error": ns.error,
        "interfaces": [interface_json(i, names) for i in ns.interfaces],
    }


def _names(net: NetworkSnapshot) -> dict[int, tuple[str, ...]]:
    return {ino: ns.names for ino, ns in net.namespaces.items() if ns.names}


def network_json(net: NetworkSnapshot, netns: str | None = None) -> dict[str, object]:
    """GET /api/v1/network: every namespace (host first), or one (?netns=<inode>)."""
    names = _names(net)
    views = sorted(net.namespaces.values(), key=lambda n: (not n.is_host, n.ino))
    if netns:
        views = [v for v in views if str(v.ino) == netns or netns in v.names]
    return {
        "host_netns": net.host_netns,
        "host_network": sorted(net.host_network),
        "namespaces": [namespace_json(v, names) for v in views],
    }


def workload_json(net: NetworkSnapshot, workload_id: str) -> dict[str, object]:
    """The `network` part of /api/v1/containers/{id} (agentctl show lists its interfaces)."""
    ino = net.netns_by_workload.get(workload_id)
    if ino is None:
        return {"netns": None, "role": None, "interfaces": [],
                "note": "no network namespace known (no init process)"}
    if workload_id in net.host_network:
        return {"netns": ino, "role": "host_network", "host_network": True, "interfaces": [],
                "note": "host network: the host's traffic is not attributed to it"}
    ns = net.namespaces.get(ino)
    if ns is None:
        return {"netns": ino, "role": None, "interfaces": [],
                "note": "namespace not readable this cycle"}
    names = _names(net)
    role = next((m.role for m in ns.members if m.id == workload_id), None)
    totals = net.totals_by_workload.get(workload_id)
    return {
        "netns": ino,
        "names": list(ns.names),
        "role": role,
        "host_network": False,
        "shared": len(ns.members) > 1,
        "counted_on": ns.owner,
        "members": [m.id for m in ns.members],
        "rx_bytes": totals[0] if totals else None,
        "tx_bytes": totals[1] if totals else None,
        "interfaces": [interface_json(i, names) for i in ns.interfaces],
    }
