"""The metrics_* configuration keys on a real agentd: identity labels once or on every series,
plain cgroups left out of /metrics (still in the API), metric groups left out."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import needs_root
from tests.support.agentd import running_agent
from tests.support.cgroups import CgroupFactory

pytestmark = needs_root


def _labels(text: str, family: str) -> list[dict[str, str]]:
    return [s.labels for fam in text_string_to_metric_families(text) if fam.name == family
            for s in fam.samples]


def _seq(agent: object) -> int:
    return int(agent.get("/healthz")["snapshot_seq"])  # type: ignore[attr-defined]


def test_default_identity_once_then_options(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("opts")
    cg.spawn(["sleep", "60"])
    with running_agent({"interval": 1}) as agent:
        s = _seq(agent)
        agent.wait_for(lambda: _seq(agent) > s + 1, timeout=30)
        text = agent.get_text("/metrics")
        usage = [lb for lb in _labels(text, "container_agent_cpu_usage_seconds")
                 if lb["id"] == cg.rel]
        assert usage == [{"id": cg.rel}]
        info = [lb for lb in _labels(text, "container_agent_workload_info")
                if lb["id"] == cg.rel]
        assert len(info) == 1 and info[0]["cgroup"] == cg.rel and info[0]["kind"] == "cgroup"
    options = {"interval": 1, "metrics_identity_labels": True, "metrics_plain_cgroups": False,
               "metrics_groups": ["cpu"]}
    with running_agent(options) as agent:
        s = _seq(agent)
        agent.wait_for(lambda: _seq(agent) > s + 1, timeout=30)
        text = agent.get_text("/metrics")
        assert cg.rel not in {lb["id"] for lb in _labels(text, "container_agent_workload_info")}
        assert "container_agent_memory_usage_bytes" not in text
        usage = _labels(text, "container_agent_cpu_usage_seconds")
        assert all({"name", "kind", "cgroup"} <= set(lb) for lb in usage)
        assert all(lb["kind"] != "cgroup" for lb in usage)
        # The API still lists the plain cgroup.
        listed = agent.get("/api/v1/containers?kind=cgroup")["containers"]
        assert cg.rel in {c["cgroup"] for c in listed}
