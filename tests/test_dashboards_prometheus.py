"""Every dashboard query returns data from a real Prometheus scraping a real agent.

The known workload is a runc container with a CPU quota, memory and pids limits, doing CPU
work, direct block IO and UDP traffic over a veth; the agent runs with the cAdvisor option so
the same Prometheus also answers the queries community dashboards use. Template variables are
filled in as Grafana would: the agent's instance, the container's name, kind and group-by.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboards.generate import JSON_DIR
from tests.conftest import needs_root
from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import cgroup_factory
from tests.support.netns import NetnsFactory, VethPair
from tests.support.prometheus import RunningPrometheus, running_prometheus
from tests.support.runc import RuncContainer, RuncUnavailable, runc_container

pytestmark = [needs_root, pytest.mark.slow]

#: Grafana's own variables, as a dashboard with a 1 s scrape interval would expand them.
BUILTIN = {"$__rate_interval": "30s", "$__range_s": "120", "$__range": "2m", "$__interval": "5s"}

WORKLOAD = (
    "( while :; do :; done ) & "
    "while :; do "
    "dd if=/dev/zero of=/tmp/io bs=64k count=32 oflag=direct conv=fsync 2>/dev/null; "
    "dd if=/tmp/io of=/dev/null bs=64k iflag=direct 2>/dev/null; "
    "sleep 0.3; done"
)

#: Queries community dashboards run against cAdvisor (Docker/cAdvisor and Kubernetes ones),
#: with the generic selectors they use; each must answer from the agent's cAdvisor mode.
CADVISOR_QUERIES = (
    "rate(container_cpu_usage_seconds_total[1m])",
    'sum by (name) (rate(container_cpu_usage_seconds_total{name=~".+"}[1m]))',
    'sum by (name) (rate(container_cpu_user_seconds_total{name=~".+"}[1m]))',
    'sum by (name) (rate(container_cpu_system_seconds_total{name=~".+"}[1m]))',
    "rate(container_cpu_cfs_throttled_periods_total[1m])"
    " / rate(container_cpu_cfs_periods_total[1m])",
    "rate(container_cpu_cfs_throttled_seconds_total[1m])",
    "container_memory_working_set_bytes",
    'sum by (name) (container_memory_working_set_bytes{name!=""})',
    "container_memory_usage_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_max_usage_bytes",
    "container_memory_working_set_bytes / container_spec_memory_limit_bytes",
    "container_spec_memory_limit_bytes > 0",
    "container_spec_cpu_quota / container_spec_cpu_period",
    "container_spec_cpu_shares",
    'sum by (name) (rate(container_network_receive_bytes_total{name=~".+"}[1m]))',
    'sum by (name) (rate(container_network_transmit_bytes_total{name=~".+"}[1m]))',
    "rate(container_network_receive_packets_total[1m])",
    'sum by (name) (rate(container_fs_reads_bytes_total{name=~".+"}[1m]))',
    'sum by (name) (rate(container_fs_writes_bytes_total{name=~".+"}[1m]))',
    "rate(container_fs_reads_total[1m])",
    "rate(container_fs_writes_total[1m])",
    "time() - container_last_seen < 60",
)


@dataclass
class Stack:
    agent: RunningAgent
    prom: RunningPrometheus
    container: RuncContainer
    name: str
    kind: str

    @property
    def instance(self) -> str:
        return self.agent.base_url.removeprefix("http://")


def _account_block_io(blkio: Path | None, where: Path) -> None:
    """cgroup v1 on recent kernels counts a cgroup's block IO only where a throttle rule exists
    for the device: set a 1 GiB/s rule (no real limit) on the disk holding the container."""
    if blkio is None:
        return  # cgroup v2: io.stat counts without rules
    dev = os.stat(where).st_dev
    sysdev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sysdev / "partition").exists():
        sysdev = sysdev.parent  # rules apply to whole disks
    disk = (sysdev / "dev").read_text().strip()
    for rule in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
        (blkio / rule).write_text(f"{disk} {1 << 30}")


def _scrapes(prom: RunningPrometheus, name: str) -> int:
    series = prom.query(f'container_agent_workload_info{{name="{name}"}}[1m]')
    return len(series[0]["values"]) if series else 0


def _find(agent: RunningAgent, cgroup: str) -> dict[str, Any] | None:
    for c in agent.get("/api/v1/containers?kind=cgroup,container,service")["containers"]:
        if c["cgroup"] == cgroup:
            return dict(c)
    return None


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with contextlib.ExitStack() as es:
        factory = es.enter_context(cgroup_factory("dash"))
        try:
            c = es.enter_context(runc_container(factory, args=["sh", "-c", WORKLOAD]))
        except RuncUnavailable as e:
            pytest.skip(str(e))
        # Limits, written into the container's own cgroups (created by this test).
        dirs = c.cgroup_dirs
        (dirs["cpu"] / "cpu.cfs_quota_us").write_text("50000")  # 0.5 core: it throttles
        (dirs["memory"] / "memory.limit_in_bytes").write_text(str(256 << 20))
        (dirs["pids"] / "pids.max").write_text("64")
        _account_block_io(dirs.get("blkio"), c.bundle)
        nets = es.enter_context(NetnsFactory("dash"))
        pair: VethPair = nets.veth(nets.attach(c.init_pid), nets.create())
        agent = es.enter_context(running_agent({"interval": 1, "cadvisor": True}))
        info = agent.wait_for(lambda: _find(agent, c.cgroup), timeout=20)
        prom = es.enter_context(
            running_prometheus([agent.base_url.removeprefix("http://")], scrape_interval="2s")
        )
        prom.wait_for(prom.targets_up, 30, "the agent target up")
        # Traffic both ways while Prometheus collects a few scrapes (bounded: 5 x 2 x 200).
        for _ in range(5):
            nets.send_udp(pair, 200, 1000)
            nets.send_udp(pair, 200, 1000, reverse=True)
            time.sleep(1)
        prom.wait_for(lambda: _scrapes(prom, info["name"]) >= 4, 90, "4 scrapes of the container")
        yield Stack(agent, prom, c, info["name"], info["kind"])


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for name, d in _dashboards().items():
        for panel in d["panels"]:
            for t in panel["targets"]:
                out.append((name, f'{panel["title"]} [{t["refId"]}]', t["expr"]))
    return out


def _regex(value: str) -> str:
    """A value as Grafana writes it into a PromQL regex matcher: escaped, in a "..." string."""
    return re.escape(value).replace("\\", "\\\\")


def _fill(expr: str, stack: Stack, group: str = "name") -> str:
    values = {
        **BUILTIN,
        "$instance": _regex(stack.instance),
        "$kind": stack.kind,
        "$container": _regex(stack.name),
        "$group": group,
    }
    # Longest names first: $__range_s before $__range.
    for key in sorted(values, key=len, reverse=True):
        expr = expr.replace(key, values[key])
    assert "$" not in expr, expr
    return expr


QUERIES = _panel_queries()


@pytest.mark.parametrize(
    ("dashboard", "panel", "expr"), QUERIES, ids=[f"{d}:{p}" for d, p, _ in QUERIES]
)
def test_panel_query_returns_series(stack: Stack, dashboard: str, panel: str, expr: str) -> None:
    for group in ("name", "pod", "namespace") if "$group" in expr else ("name",):
        filled = _fill(expr, stack, group)
        result = stack.prom.query(filled)
        assert result, f"{dashboard} / {panel}: no series for\n  {filled}"


def test_template_variables_offer_the_workload(stack: Stack) -> None:
    for name, d in _dashboards().items():
        for var in d["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"] or "")
            if var["type"] != "query" or m is None:
                continue
            series = stack.prom.query(_fill(m.group(1), stack))
            values = {s["metric"].get(m.group(2)) for s in series}
            expected = stack.instance if m.group(2) == "instance" else stack.name
            assert expected in values, (name, var["name"], sorted(v for v in values if v))


def test_annotation_queries_are_valid_promql(stack: Stack) -> None:
    for d in _dashboards().values():
        for ann in d["annotations"]["list"]:
            if "expr" in ann:
                stack.prom.query(_fill(ann["expr"], stack))  # raises on a PromQL error


@pytest.mark.parametrize("expr", CADVISOR_QUERIES)
def test_cadvisor_community_query(stack: Stack, expr: str) -> None:
    result = stack.prom.query(expr)
    assert result, f"cAdvisor mode: no series for {expr}"
    names = {s["metric"].get("name") for s in result}
    if "name" in expr or "by (name)" in expr:
        assert stack.name in names, (expr, sorted(n for n in names if n))


def _panel_expr(dashboard: str, title: str) -> str:
    panel = next(p for p in _dashboards()[dashboard]["panels"] if p["title"] == title)
    return str(panel["targets"][0]["expr"])


def test_cpu_panel_value_matches_the_agents_own_rate(stack: Stack) -> None:
    """The container's CPU panel (PromQL rate over scraped counters) against the rate the agent
    computes itself, averaged over the panel's window; the container's 0.5-core quota bounds
    both. A scrape reads the last snapshot, so a late cycle repeats a counter value: the window
    must hold enough scrapes (30 s at 2 s) for rate() to even that out."""
    expr = _fill(_panel_expr("container-detail.json", "CPU"), stack)
    own: list[float] = []
    deadline = time.monotonic() + 120
    while _scrapes(stack.prom, stack.name) < 15 or len(own) < 20:
        assert time.monotonic() < deadline, (own, _scrapes(stack.prom, stack.name))
        c = _find(stack.agent, stack.container.cgroup)
        if c is not None and c["cpu_cores"] is not None:
            own = [*own[-29:], float(c["cpu_cores"])]
        time.sleep(1)
    agent_rate = sum(own) / len(own)
    result = stack.prom.query(expr)
    assert len(result) == 1, result
    panel_rate = float(result[0]["value"][1])
    assert 0 < panel_rate <= 0.5 * 1.1 and 0 < agent_rate <= 0.5 * 1.1, (panel_rate, own)
    assert abs(panel_rate - agent_rate) <= max(0.1, 0.3 * agent_rate), (panel_rate, own)
