"""Rendering a snapshot: label safety, both formats, rates that refuse resets and recreations."""

from __future__ import annotations

import os
from types import MappingProxyType

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_parse,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.exporters.exposition import MetricsRenderer
from agent.model.rates import compute_rates
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.samples import UNLIMITED, CgroupSample, CpuSample, MemorySample

HOST = HostInfo("h", "boot", "mid", "6.18", "hybrid", 2, 1 << 30, "0.1.0")


def _sample(path: str, usage: int, inode: int = 7, t_ns: int = 0) -> CgroupSample:
    return CgroupSample(
        path=path, inode=inode, monotonic_ns=t_ns, wall_ns=1_700_000_000_000_000_000 + t_ns,
        cpu=CpuSample(usage_usec=usage, user_usec=usage // 2, system_usec=usage // 2,
                      max_quota_usec=UNLIMITED, max_period_usec=100000),
        memory=MemorySample(current=4096, max=UNLIMITED,
                            stat=MappingProxyType({"inactive_file": 1024, "anon": 3072})),
        populated=True, frozen=False,
    )


def _snapshot(names: list[str]) -> Snapshot:
    workloads = {}
    for i, name in enumerate(names):
        path = f"/c{i}"
        ident = WorkloadIdentity(id=f"id{i}", kind=WorkloadKind.CONTAINER, runtime="runc",
                                 name=name, cgroup=path, inode=100 + i, pod_name=name)
        workloads[ident.id] = WorkloadState(ident, _sample(path, 1_234_567 + i))
    return Snapshot(seq=1, wall_ns=1, monotonic_ns=1, cycle_cpu_ns=0, host=HOST,
                    workloads=MappingProxyType(workloads))


HOSTILE = ['quo"te', "back\\slash", "new\nline", os.fsdecode(b"bad\xffbyte"), "ünï"]


def test_hostile_label_values_round_trip_in_both_formats() -> None:
    snap = _snapshot(HOSTILE)
    renderer = MetricsRenderer(cadvisor=True)
    renderer.prepare(snap)
    text = b"".join(renderer.scrape(snap, False)).decode()
    om = b"".join(renderer.scrape(snap, True)).decode()
    expected = set(HOSTILE[:3]) | {"bad\\xffbyte", "ünï"}
    for parse, body in ((text_string_to_metric_families, text), (om_parse, om)):
        names = set()
        for fam in parse(body):
            for s in fam.samples:
                if s.name.startswith("container_agent_workload_info"):
                    names.add(s.labels["name"])
        assert names == expected
    assert om.endswith("# EOF\n") and om.count("# EOF") == 1


def test_counter_values_are_exact_seconds() -> None:
    snap = _snapshot(["a"])
    renderer = MetricsRenderer(cadvisor=True)
    renderer.prepare(snap)
    text = b"".join(renderer.scrape(snap, False)).decode()
    values: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            values.setdefault(s.name, []).append(s.value)
    # Every checked series is present (an absent one must fail, not skip the assertion).
    assert [round(v * 1e6) for v in values["container_agent_cpu_usage_seconds_total"]] == [
        1_234_567]
    assert [round(v * 1e6) for v in values["container_cpu_usage_seconds_total"]] == [1_234_567]
    assert values["container_agent_memory_working_set_bytes"] == [3072]
    assert values["container_spec_memory_limit_bytes"] == [0]  # cAdvisor's "unlimited"


def test_rates_refuse_recreation_and_reset() -> None:
    a = _sample("/c", 1_000_000, inode=1, t_ns=0)
    b = _sample("/c", 1_500_000, inode=1, t_ns=1_000_000_000)
    r = compute_rates(a, b, (0, 0), (1000, 2000))
    assert r is not None and r.cpu_cores == 0.5
    assert r.net_rx_bytes_per_s == 1000 and r.net_tx_bytes_per_s == 2000
    recreated = _sample("/c", 10, inode=2, t_ns=2_000_000_000)
    assert compute_rates(b, recreated) is None
    reset = _sample("/c", 10, inode=1, t_ns=2_000_000_000)
    r2 = compute_rates(b, reset)
    assert r2 is not None and r2.cpu_cores is None


def test_rates_of_an_idle_reread_equal_the_general_rule() -> None:
    # An idle re-read's sample shares its values with the last (sample.at): the short cut
    # must give what the field-by-field rule gives for equal values.
    from dataclasses import replace

    from collectors.samples import IoDeviceSample
    io = (IoDeviceSample(major=8, minor=0, device="sda", rbytes=5, wbytes=None, rios=1,
                         wios=2),)
    for a in (_sample("/c", 1_000_000), replace(_sample("/c", 9), io=io, cpu=None),
              replace(_sample("/c", 9), io=(), cpu=CpuSample(usage_usec=None))):
        b = a.at(a.monotonic_ns + 2_000_000_000, a.wall_ns + 2_000_000_000)
        assert b.same_values(a)
        for net in (None, (10, 20)):
            fast = compute_rates(a, b, net, net)
            # The same values in new objects: not the short cut.
            general = compute_rates(a, replace(b, stat=dict(b.stat)), net, net)
            assert fast == general and fast is not None


def test_direct_rendering_equals_prometheus_client_rendering() -> None:
    """render_workload_families (the scrape path) and snapshot_families (remote write) agree."""
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.exporters.metrics import (
        MetricsOptions,
        render_workload_families,
        snapshot_families,
    )

    snap = _snapshot(HOSTILE)

    class Fams:
        def collect(self):  # type: ignore[no-untyped-def]
            return snapshot_families(snap)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fams())  # type: ignore[arg-type]

    def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for fam in text_string_to_metric_families(text) for s in fam.samples
                if not s.name.startswith(("container_agent_up", "container_agent_build",
                                          "container_agent_workloads", "container_agent_cycle",
                                          "container_agent_snapshot"))}

    rendered = render_workload_families(snap, MetricsOptions(identity_labels=True))
    direct = samples(b"".join(f.text_header + f.lines for f in rendered).decode())
    via_client = samples(generate_latest(reg).decode())
    assert direct == via_client
    assert len(direct) >= 10 * len(HOSTILE)


def test_cadvisor_direct_rendering_equals_prometheus_client_rendering() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.exporters.cadvisor import cadvisor_families, cadvisor_render

    snap = _snapshot(HOSTILE)

    class Fams:
        def collect(self):  # type: ignore[no-untyped-def]
            return cadvisor_families(snap)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fams())  # type: ignore[arg-type]
    direct = b"".join(f.text_header + f.lines for f in cadvisor_render(snap)).decode()

    def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    got = samples(direct)
    assert got == samples(generate_latest(reg).decode())
    names = {name for name, _, _ in got}
    assert {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
            "container_spec_memory_limit_bytes", "container_last_seen"} <= names


def test_rendered_once_per_snapshot_on_first_scrape() -> None:
    from dataclasses import replace

    snap = _snapshot(["a", "b"])
    renderer = MetricsRenderer(cadvisor=True)
    renderer.prepare(snap)
    assert renderer.renders == 0  # a cycle alone renders nothing
    first = b"".join(renderer.scrape(snap, False))
    assert b"".join(renderer.scrape(snap, False)) == first and renderer.renders == 1
    renderer.scrape(snap, True)
    assert renderer.renders == 1  # both formats come from the one rendering
    nxt = _snapshot(["a", "b", "c"])
    nxt = replace(nxt, seq=2)
    renderer.prepare(nxt)
    renderer.prepare(nxt)
    assert renderer.renders == 1
    body = b"".join(renderer.scrape(nxt, False)).decode()
    assert renderer.renders == 2 and 'name="c"' in body and 'name="c"' not in first.decode()


def test_snapshots_render_after_their_cycle_only_while_something_scrapes() -> None:
    from dataclasses import replace

    from agent.exporters.exposition import RENDER_AHEAD_WINDOW_S

    renderer = MetricsRenderer(cadvisor=False)
    first = _snapshot(["a"])
    assert not renderer.render_ahead(first)  # never scraped: nothing rendered
    assert renderer.renders == 0
    renderer.scrape(first, False)
    scraped = renderer.scraped_ns
    assert renderer.renders == 1 and scraped is not None
    nxt = replace(_snapshot(["a", "b"]), seq=2)
    renderer.prepare(nxt)
    assert renderer.render_ahead(nxt, scraped + 10**9)
    assert renderer.renders == 2
    body = b"".join(renderer.scrape(nxt, False))
    assert renderer.renders == 2  # the scrape found it rendered
    fresh = MetricsRenderer(cadvisor=False)
    assert body == b"".join(fresh.scrape(nxt, False))
    late = replace(_snapshot(["a", "b", "c"]), seq=3)
    renderer.prepare(late)
    assert not renderer.render_ahead(
        late, renderer.scraped_ns + int(RENDER_AHEAD_WINDOW_S * 1e9) + 1)  # scraper gone
    assert renderer.renders == 2


def test_identity_labels_once_groups_and_plain_cgroups() -> None:
    from dataclasses import replace

    from agent.exporters.metrics import MetricsOptions, render_workload_families

    snap = _snapshot(["web", "db"])
    # Identities as on a Kubernetes node: a containerd id, a pod, a systemd-style cgroup path.
    cid = "3f" * 32
    pod = "kubepods-burstable-pod6b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice"
    web = snap.workloads["id0"]
    web = replace(web, identity=replace(
        web.identity, id=cid, pod_name="web-5d9f7c6b8-x2k4q", namespace="shop",
        cgroup=f"/kubepods.slice/kubepods-burstable.slice/{pod}/cri-containerd-{cid}.scope"))
    plain = snap.workloads["id1"]
    plain = replace(plain, identity=replace(plain.identity, kind=WorkloadKind.CGROUP))
    snap = replace(snap, workloads=MappingProxyType({cid: web, "id1": plain}))

    def text(options: MetricsOptions) -> str:
        return b"".join(f.text_header + f.lines
                        for f in render_workload_families(snap, options)).decode()

    def series_bytes(body: str) -> int:
        return sum(len(ln) + 1 for ln in body.splitlines() if not ln.startswith("#"))

    full = text(MetricsOptions(identity_labels=True))
    lean = text(MetricsOptions())
    assert series_bytes(lean) * 2 <= series_bytes(full)  # at most half per workload
    fams = {f.name: f for f in text_string_to_metric_families(lean)}
    info = fams["container_agent_workload_info"].samples
    assert {s.labels["name"] for s in info} == {"web", "db"}
    assert set(info[0].labels) >= {"id", "name", "runtime", "kind", "cgroup", "pod", "namespace"}
    usage = fams["container_agent_cpu_usage_seconds"].samples
    assert [set(s.labels) for s in usage] == [{"id"}, {"id"}]
    assert {s.labels["id"]: round(s.value * 1e6) for s in usage} == {
        cid: 1_234_567, "id1": 1_234_568}
    # Groups left out, and plain cgroups left out (containers stay).
    no_mem = text(MetricsOptions(groups=frozenset({"cpu"}), plain_cgroups=False))
    assert "container_agent_memory_usage_bytes" not in no_mem
    assert f'id="{cid}"' in no_mem and 'id="id1"' not in no_mem
