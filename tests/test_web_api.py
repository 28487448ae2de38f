"""The web UI's HTTP side against a real agentd: page and assets, history, billing top, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory, TestCgroup

MIB = 1 << 20
#: 1 s cycles and a 2 min window: every cycle is a chart point (a 15 min window keeps every
#: 5th at 1 s).
CONFIG = {"interval": 1, "web": {"history_seconds": 120}}
#: The first cycle walks every cgroup on the host: slow while other tests load it.
READY_S = 120


def _error(agent: RunningAgent, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(agent.base_url + path, method=method)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    return err.value.code, err.value.read().decode()


def _limits(cg: TestCgroup) -> None:
    if "cpu" in cg.dirs:
        cg.write("cpu", "cpu.cfs_quota_us", "50000")
        cg.write("memory", "memory.limit_in_bytes", str(128 * MIB))
    else:
        cg.write("unified", "cpu.max", "50000 100000")
        cg.write("unified", "memory.max", str(128 * MIB))


def test_page_assets_and_read_only() -> None:
    with running_agent(CONFIG, ready=False) as agent:
        agent.wait_ready(READY_S)
        req = urllib.request.urlopen(agent.base_url + "/", timeout=10)
        page = req.read().decode()
        assert req.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in req.headers["Content-Security-Policy"]
        for asset in ("app.js", "charts.js", "app.css"):
            assert f"/ui/{asset}" in page
            body = agent.get_text(f"/ui/{asset}")
            assert len(body) > 500
        code, body = _error(agent, "/ui/secrets.txt")
        assert code == 404 and json.loads(body)["error"] == "no such file 'secrets.txt'"
        # No write action over TCP: the page's paths answer GET only.
        for path in ("/", "/api/v1/ui/workloads", "/api/v1/billing/top"):
            assert _error(agent, path, "POST")[0] == 405
        code, body = _error(agent, "/api/v1/billing/top?n=0")
        assert code == 400 and "n must be an integer from 1 to 100" in body
        code, body = _error(agent, "/api/v1/history/no/such/workload")
        assert code == 404 and json.loads(body)["exit_code"] == 5


def test_history_and_billing_top_of_a_burning_cgroup(cgroups: CgroupFactory) -> None:
    cg = cgroups.create(f"web-api-{uuid.uuid4().hex[:6]}")
    _limits(cg)
    cg.burn()
    with running_agent(CONFIG, ready=False) as agent:
        agent.wait_ready(READY_S)
        def burning() -> bool:
            h = agent.get("/api/v1/history/" + cg.rel.lstrip("/"))
            return sum((v or 0) > 0.05 for v in h["series"]["cpu_cores"]) >= 3
        agent.wait_for(burning, timeout=90, interval=0.3)
        h = agent.get("/api/v1/history/" + cg.rel.lstrip("/"))
        assert h["id"] == cg.rel and h["name"] == cg.name
        assert h["cpu_quota_cores"] == 0.5 and h["memory_limit_bytes"] == 128 * MIB
        assert len(h["t"]) == len(h["series"]["memory_bytes"]) == len(h["series"]["pids"])
        assert h["t"] == sorted(h["t"])
        # The quota holds: no cycle shows more than 0.5 cores (plus timing slack).
        assert max(v for v in h["series"]["cpu_cores"] if v is not None) < 0.5 * 1.3
        # The same history by its cgroup path with the leading slash.
        assert agent.get("/api/v1/history//" + cg.rel.lstrip("/"))["id"] == cg.rel

        rows = {r["cgroup"]: r for r in agent.get("/api/v1/ui/workloads")["workloads"]}
        assert rows[cg.rel]["memory_limit_bytes"] == 128 * MIB
        assert rows[cg.rel]["cpu_quota_cores"] == 0.5
        assert rows[cg.rel]["name"] == cg.name and rows[cg.rel]["state"] == "running"
        # Only the kinds asked for travel (the page's default view: containers and services).
        shown = agent.get("/api/v1/ui/workloads?kind=container,service")
        assert {r["kind"] for r in shown["workloads"]} <= {"container", "service"}
        assert cg.rel not in {r["cgroup"] for r in shown["workloads"]}
        assert shown["total"] >= len(rows)
        code, body = _error(agent, "/api/v1/ui/workloads?kind=pod")
        assert code == 400 and "kind must be among" in body

        # Billing: stop the burner so the counters stand still, then compare with the export.
        cg.stop_processes()
        seq = agent.get("/healthz")["snapshot_seq"]
        agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq + 2, timeout=20)
        top = agent.get("/api/v1/billing/top?n=100")
        mine = [t for t in top["top"] if t["id"] == cg.rel]
        assert mine and mine[0]["name"] == cg.name and mine[0]["cpu_usec"] > 0
        assert top["period_end"] - top["period_start"] == 3600
        assert all(t["id"] != "/" for t in top["top"])
        cpu = [t["cpu_usec"] for t in top["top"]]
        assert cpu == sorted(cpu, reverse=True)
        export = agent.get(f"/api/v1/billing?from={top['period_start']}&to={top['period_end']}"
                           "&group_by=container&open=1")
        same = [r for r in export if r["x_GroupKey"] == cg.rel and r["x_Meter"] == "cpu_usec"]
        assert [r["ConsumedQuantity"] for r in same] == [mine[0]["cpu_usec"]]


def test_disabled() -> None:
    with running_agent({"web": {"enabled": False}}) as agent:
        assert _error(agent, "/")[0] == 404
        assert _error(agent, "/api/v1/ui/workloads")[0] == 404
        assert agent.get("/healthz")["status"] == "ok"


def test_bad_setting_is_one_line() -> None:
    with running_agent({"web": {"history_seconds": 5}}, ready=False) as agent:
        assert agent.proc.wait(timeout=20) == 2
        assert "history_seconds" in agent.log() and "Traceback" not in agent.log()
