"""agentd end to end: a real daemon, real cgroups, HTTP, the Unix socket and agentctl."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import needs_root
from tests.support.agentd import BIN, RunningAgent, running_agent, write_toml
from tests.support.cgroups import CgroupFactory, TestCgroup

pytestmark = needs_root


def _samples(text: str, name: str) -> list[Any]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out.append(s)
    return out


def _workload(agent: RunningAgent, cgroup: str) -> dict[str, Any] | None:
    data = agent.get("/api/v1/containers?kind=cgroup,container,service")
    for c in data["containers"]:
        if c["cgroup"] == cgroup:
            return dict(c)
    return None


def _seq(agent: RunningAgent) -> int:
    return int(agent.get("/healthz")["snapshot_seq"])


def _wait_cycles(agent: RunningAgent, n: int = 2) -> None:
    start = _seq(agent)
    agent.wait_for(lambda: _seq(agent) >= start + n, timeout=20)


def test_new_cgroup_appears_in_api_and_agentctl(cgroups: CgroupFactory) -> None:
    with running_agent({"interval": 5}) as agent:
        cg = cgroups.create("appears")
        cg.spawn(["sleep", "30"])
        # Interval is 5 s: the cgroup must come through inotify, not the next cycle.
        found = agent.wait_for(lambda: _workload(agent, cg.rel), timeout=4)
        assert found["kind"] == "cgroup"
        out = agent.agentctl("ls", "--all", "--json")
        assert out.returncode == 0, out.stderr
        assert cg.rel in [c["cgroup"] for c in json.loads(out.stdout)]
        table = agent.agentctl("ls", "--all")
        assert cg.rel in table.stdout
        show = agent.agentctl("show", cg.rel)
        assert show.returncode == 0, show.stderr
        assert f"cgroup:    {cg.rel}" in show.stdout
        cg.remove()
        agent.wait_for(lambda: _workload(agent, cg.rel) is None, timeout=4)


def test_metrics_cpu_equals_kernel_counter(cgroups: CgroupFactory) -> None:
    with running_agent({"interval": 1}) as agent:
        cg = cgroups.create("cpu-exact")
        burner = cg.burn(seconds=0.4)
        burner.wait(timeout=30)
        kernel_usec = cg.cpu_usage_usec()  # the burner has exited: the counter is final
        _wait_cycles(agent, 2)
        text = agent.get_text("/metrics")
        # A plain cgroup's id is its path; the other identity labels are on workload_info.
        got = [s for s in _samples(text, "container_agent_cpu_usage_seconds_total")
               if s.labels["id"] == cg.rel]
        assert len(got) == 1
        assert round(got[0].value * 1e6) == kernel_usec
        assert kernel_usec > 300_000


def test_cpu_rate_of_a_quota_limited_burner(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("rate")
    if "cpu" in cg.dirs:  # v1 cpu controller (hybrid, legacy)
        cg.write("cpu", "cpu.cfs_period_us", "100000")
        cg.write("cpu", "cpu.cfs_quota_us", "25000")
    elif (cg.dirs["unified"] / "cpu.max").exists():
        cg.write("unified", "cpu.max", "25000 100000")
    else:
        pytest.skip("no cpu controller to set a quota with")
    cg.burn()
    with running_agent({"interval": 2}) as agent:
        _wait_cycles(agent, 3)
        rates = []
        for _ in range(3):
            _wait_cycles(agent, 1)
            w = _workload(agent, cg.rel)
            assert w is not None and w["cpu_cores"] is not None
            rates.append(w["cpu_cores"])
        # The quota is 0.25 cores; a busy loop uses all of it.
        for r in rates:
            assert abs(r - 0.25) / 0.25 <= 0.05, rates


def test_cadvisor_names_and_openmetrics(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("cadv")
    cg.spawn(["sleep", "30"])
    with running_agent({"cadvisor": True}) as agent:
        agent.wait_for(lambda: _workload(agent, cg.rel))
        _wait_cycles(agent, 1)
        text = agent.get_text("/metrics")
        ids = {s.labels["id"] for s in _samples(text, "container_cpu_usage_seconds_total")}
        assert cg.rel in ids
        assert _samples(text, "container_memory_working_set_bytes")
        om = agent.get_text("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.rstrip().endswith("# EOF")
        assert om.count("# EOF") == 1


def _fetch(agent: RunningAgent, path: str, headers: dict[str, str]) -> tuple[Any, bytes]:
    req = urllib.request.Request(agent.base_url + path, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers, resp.read()


def test_metrics_gzip_for_scrapers_that_accept_it(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("gz")
    cg.spawn(["sleep", "30"])
    with running_agent({}) as agent:
        agent.wait_for(lambda: _workload(agent, cg.rel))
        _wait_cycles(agent, 1)
        for accept in ("", "application/openmetrics-text; version=1.0.0"):
            headers, body = _fetch(agent, "/metrics",
                                   {"Accept": accept, "Accept-Encoding": "gzip, deflate"})
            assert headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in headers["Vary"]
            assert int(headers["Content-Length"]) == len(body)
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member, all of it
            text = (d.decompress(body) + d.flush()).decode()
            assert d.eof and not d.unused_data
            assert len(body) * 4 < len(text)
            if accept:
                assert text.endswith("# EOF\n") and text.count("# EOF") == 1
                continue
            info = _samples(text, "container_agent_workload_info")
            ids = {s.labels["id"] for s in info if s.labels["cgroup"] == cg.rel}
            cpu = _samples(text, "container_agent_cpu_usage_seconds_total")
            assert len(ids) == 1 and ids <= {s.labels["id"] for s in cpu}
            assert "container_agent_component_up" in text  # the live part is there too
        headers, body = _fetch(agent, "/metrics", {"Accept-Encoding": "gzip;q=0, identity"})
        assert "Content-Encoding" not in headers
        assert b"container_agent_cpu_usage_seconds_total" in body


def test_the_agent_times_its_answers_and_its_event_loop() -> None:
    """Each route's handler time and the event loop's lag, exported by a real agentd: the
    /healthz requests made here are counted under their route, over HTTP and the socket."""
    with running_agent({}) as agent:
        _wait_cycles(agent, 1)
        for _ in range(3):
            agent.get_text("/healthz")
        assert agent.agentctl("host").returncode == 0  # /api/v1/host, on the unix socket
        time.sleep(0.5)  # a few lag ticks
        text = agent.get_text("/metrics")
    counts = {s.labels["handler"]: s.value
              for s in _samples(text, "container_agent_http_request_duration_seconds_count")}
    assert counts["/healthz"] >= 3 and counts["/api/v1/host"] >= 1
    lag = _samples(text, "container_agent_event_loop_lag_seconds_count")
    assert len(lag) == 1 and lag[0].value >= 3


def test_hostile_cgroup_names_scrape_and_parse(cgroups: CgroupFactory) -> None:
    # The kernel refuses a newline in a cgroup name (EINVAL); names with newlines reach labels
    # through container names instead (tests/test_metrics_render.py covers that).
    with pytest.raises(OSError):
        cgroups.create("new\nline")
    names = ['quo"te\\back', "sp ace{}=,", os.fsdecode(b"bad\xffutf8")]
    made: list[TestCgroup] = []
    for n in names:
        cg = cgroups.create(n)
        cg.spawn(["sleep", "30"])
        made.append(cg)
    with running_agent() as agent:
        _wait_cycles(agent, 2)
        text = agent.get_text("/metrics")
        info = _samples(text, "container_agent_workload_info")
        cgs = {s.labels["cgroup"] for s in info}
        assert made[0].rel in cgs
        assert made[1].rel in cgs
        bad = made[2].rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        assert bad in cgs
        listing = agent.agentctl("ls", "--all", "--json")
        assert listing.returncode == 0


def test_sigterm_exits_cleanly_and_socket_removed() -> None:
    with running_agent() as agent:
        assert agent.socket.exists()
        rc = agent.stop()
    assert rc == 0
    assert not agent.socket.exists()
    assert "Traceback" not in agent.log()


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("intervall = 5\n", "intervall: unknown key"),
        ("interval = 0\n", "interval: must be between 1 and 60"),
        ('interval = "fast"\n', "interval: expected a number"),
        ("[nosuch]\nx = 1\n", "[nosuch]: unknown section"),
        ("interval = \n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml)
    out = subprocess.run([str(BIN / "agentd"), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


def test_agentctl_without_daemon_and_unknown_container(tmp_path: Path) -> None:
    out = subprocess.run([str(BIN / "agentctl"), "--socket", str(tmp_path / "none.sock"), "ls"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 4
    assert out.stderr.startswith("agentctl: agent is not running")
    assert len(out.stderr.strip().splitlines()) == 1
    with running_agent() as agent:
        r = agent.agentctl("show", "no-such-container")
        assert r.returncode == 5
        assert r.stderr.strip().splitlines() == [
            "agentctl: no container, workload or cgroup matches 'no-such-container'"]


def test_sighup_reloads_interval(tmp_path: Path) -> None:
    with running_agent({"interval": 10}) as agent:
        config = {"interval": 1, "listen": f"127.0.0.1:{agent.port}",
                  "socket": str(agent.socket), "state_dir": str(agent.state_dir)}
        write_toml(agent.config_path, config)
        start = _seq(agent)
        agent.proc.send_signal(1)
        agent.wait_for(lambda: "configuration reloaded (interval)" in agent.log(), timeout=10)
        # At the old 10 s interval two more cycles would take 20 s.
        agent.wait_for(lambda: _seq(agent) >= start + 3, timeout=15)


def test_runc_container_in_api_and_agentctl_ls(cgroups: CgroupFactory) -> None:
    from tests.support.runc import RuncUnavailable, runc_container, runc_unavailable_reason

    reason = runc_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_agent({"interval": 1}) as agent:
        try:
            ctx = runc_container(cgroups, args=["sh", "-c", "while :; do :; done"])
            c = ctx.__enter__()
        except RuncUnavailable as e:
            pytest.skip(str(e))
        try:
            def listed() -> dict[str, Any] | None:
                data = agent.get("/api/v1/containers?kind=container")
                return next((w for w in data["containers"] if w["id"] == c.id), None)

            w = agent.wait_for(lambda: (x := listed()) and x["runtime"] == "runc" and x, 20)
            assert w["init_pid"] == c.init_pid
            assert w["namespaces"]["net"] != os.stat("/proc/self/ns/net").st_ino
            out = agent.agentctl("ls")
            assert out.returncode == 0, out.stderr
            line = next(x for x in out.stdout.splitlines() if x.startswith(c.id[:12]))
            assert "runc" in line.split()
            agent.wait_for(lambda: (x := listed()) and x["cpu_cores"], 20)
        finally:
            ctx.__exit__(None, None, None)


def test_agentctl_top_and_host(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("top")
    cg.burn()
    with running_agent({"interval": 1}) as agent:
        _wait_cycles(agent, 2)
        out = agent.agentctl("top", "--all", "--batch", "-n", "1", "--sort", "cpu")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "workloads  sorted by cpu" in lines[0]
        assert lines[1].split()[:3] == ["ID", "NAME", "RUNTIME"]
        assert any(cg.rel in line for line in lines[2:])
        js = agent.agentctl("top", "--all", "--json", "-n", "2", "--delay", "0.2")
        docs = [json.loads(x) for x in js.stdout.splitlines()]
        assert len(docs) == 2
        assert any(c["cgroup"] == cg.rel for c in docs[0]["containers"])
        host = agent.agentctl("host", "--json")
        facts = json.loads(host.stdout)
        assert facts["cgroup_layout"] in ("unified", "hybrid", "legacy")
        assert facts["workloads"] >= 1
        bad = agent.agentctl("top", "--delay", "0")
        assert bad.returncode == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["agentctl", "frobnicate"],
        ["agentctl", "freeze"],
        ["agentctl", "top", "--delay", "0"],
        ["agentd", "--interval", "x"],
        ["agentd", "--log-level", "loud"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv: list[str]) -> None:
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, AGENT_SOCKET="/nonexistent.sock"))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(argv[0])
