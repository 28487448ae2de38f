"""Container identity and control through a real, private dockerd (tests/support/docker.py).

One dockerd serves the module (starting one takes seconds); every test makes its own
containers and the helper removes exactly those.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control import owners
from agent.control.errors import ControlError
from agent.control.targets import Target
from agent.core.exit_codes import ExitCode
from agent.identity.engine_api import EngineClient
from collectors.layout import detect_layout
from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.docker import DockerUnavailable, PrivateDockerd, private_dockerd

#: The first cycle walks every cgroup of the host, which other test runs may fill: be patient.
READY_S = 120.0

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web"}


@pytest.fixture(scope="module")
def dockerd() -> Iterator[PrivateDockerd]:
    try:
        with private_dockerd() as d:
            yield d
    except DockerUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def agent(dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    with running_agent({"interval": 1, "cadvisor": True,
                        # naming, not latency, is tested here: a loaded host may be slow
                        "identity": {"docker_socket": str(dockerd.socket), "api_timeout": 10,
                                     "retry_interval": 2}},
            ready_timeout=READY_S) as a:
        yield a


def _listed(agent: RunningAgent, cid: str) -> dict[str, Any] | None:
    data = agent.get("/api/v1/containers?kind=container")
    return next((w for w in data["containers"] if w["id"] == cid), None)


def _wait_named(agent: RunningAgent, cid: str, name: str) -> dict[str, Any]:
    w: dict[str, Any] = agent.wait_for(
        lambda: (x := _listed(agent, cid)) and x["name"] == name and x, 60)
    return w


def test_name_image_and_compose_labels_everywhere(dockerd: PrivateDockerd,
                                                  agent: RunningAgent) -> None:
    cid = dockerd.run("web-1", "sleep", "1000", labels=COMPOSE)
    w = _wait_named(agent, cid, "web-1")
    assert w["runtime"] == "docker"
    assert w["image"] == "local/busybox:1"
    assert w["labels"]["com.docker.compose.project"] == "shop"
    assert w["labels"]["image_id"].startswith("sha256:")
    # /metrics: the identity labels once on workload_info (the other series carry the id to
    # join on), and cAdvisor's series with the compose label allowlisted.
    def info_series() -> list[str]:
        return [x for x in agent.get_text("/metrics").splitlines()
                if x.startswith("container_agent_workload_info{") and f'id="{cid}"' in x
                and 'name="web-1"' in x]

    info = agent.wait_for(info_series, 15)  # rendered once per cycle
    assert 'image="local/busybox:1"' in info[0] and 'runtime="docker"' in info[0]
    text = agent.get_text("/metrics")
    assert any(x.startswith(f'container_agent_cpu_usage_seconds_total{{id="{cid}"')
               for x in text.splitlines())
    ca = [x for x in text.splitlines()
          if x.startswith("container_memory_usage_bytes{") and 'name="web-1"' in x]
    assert ca, "no cAdvisor series for web-1"
    assert 'image="local/busybox:1"' in ca[0]
    assert 'container_label_com_docker_compose_project="shop"' in ca[0]
    assert 'container_agent_runtime_api_up{runtime="docker"} 1.0' in text
    # agentctl ls and show
    out = agent.agentctl("ls")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith(cid[:12]))
    assert line.split()[1:4] == ["web-1", "docker", "local/busybox:1"]
    show = agent.agentctl("show", "web-1")
    assert "image:     local/busybox:1" in show.stdout
    assert "label com.docker.compose.service=web" in show.stdout


def test_rename_is_seen(dockerd: PrivateDockerd, agent: RunningAgent) -> None:
    cid = dockerd.run("before-rename", "sleep", "1000")
    _wait_named(agent, cid, "before-rename")
    dockerd.docker("rename", "before-rename", "after-rename")
    _wait_named(agent, cid, "after-rename")


def test_freeze_and_thaw_by_name_go_through_docker(dockerd: PrivateDockerd,
                                                   agent: RunningAgent) -> None:
    cid = dockerd.run("pausable", "sleep", "1000")
    _wait_named(agent, cid, "pausable")
    out = agent.agentctl("freeze", "pausable")
    assert out.returncode == 0, out.stderr
    assert "through docker" in out.stdout
    assert dockerd.inspect(cid, "{{.State.Paused}}") == "true"
    assert "Paused" in dockerd.docker("ps", "--filter", f"id={cid}").stdout
    agent.wait_for(lambda: _listed(agent, cid)["state"] == "frozen", 15)
    out = agent.agentctl("thaw", "pausable", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "docker"
    assert dockerd.inspect(cid, "{{.State.Paused}}") == "false"
    events = agent.get("/api/v1/events?type=frozen,thawed&container=" + cid)["events"]
    assert [(e["type"], e["fields"]["via"], e["fields"]["outcome"]) for e in events] == [
        ("frozen", "docker", "ok"), ("thawed", "docker", "ok")]
    # --cgroup forces the direct path: docker is not told.
    out = agent.agentctl("freeze", "pausable", "--cgroup", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "cgroup"
    assert dockerd.inspect(cid, "{{.State.Paused}}") == "false"
    out = agent.agentctl("thaw", "pausable", "--cgroup")
    assert out.returncode == 0, out.stderr


def test_refusal_is_exit_1_with_dockers_message(dockerd: PrivateDockerd,
                                                tmp_path: Path) -> None:
    """docker refuses to pause a container that is not running: the route reports docker's
    own message as exit 1 and changes nothing. (Driven below the socket API: a container's
    cgroup is gone once it stops, so agentctl could not name it any more.)"""
    cid = dockerd.run("refuser", "sleep", "1000")
    dockerd.docker("stop", "-t", "0", cid)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = EngineClient("docker", dockerd.socket, 5.0)
    try:
        target = Target("refuser", "/x", tmp_path, None)
        route = owners.Route("docker", cid, client=client)
        with pytest.raises(ControlError) as err:
            owners.freeze(target, detect_layout(), route, 5.0, loop, lambda m: None)
        assert err.value.exit_code == ExitCode.FAILED
        assert "is not running" in err.value.message
        assert "\n" not in err.value.message
        assert dockerd.inspect(cid, "{{.State.Status}}") == "exited"
    finally:
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_kill_by_name_goes_through_docker(dockerd: PrivateDockerd, agent: RunningAgent) -> None:
    cid = dockerd.run("killable", "sleep", "1000")
    _wait_named(agent, cid, "killable")
    out = agent.agentctl("kill", "killable", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "docker"
    assert dockerd.inspect(cid, "{{.State.Running}}") == "false"
    assert dockerd.inspect(cid, "{{.State.ExitCode}}") == "137"


def test_ambiguous_name_is_exit_2_with_candidates(dockerd: PrivateDockerd,
                                                  agent: RunningAgent,
                                                  cgroups: CgroupFactory) -> None:
    cid = dockerd.run("dup", "sleep", "1000")
    cg = cgroups.create("dup")  # a plain cgroup is named by its directory: "dup" too
    _wait_named(agent, cid, "dup")
    agent.wait_for(lambda: any(w["cgroup"] == cg.rel for w in agent.get(
        "/api/v1/containers")["containers"]), 15)
    out = agent.agentctl("freeze", "dup")
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1
    assert "ambiguous" in out.stderr and cid[:12] in out.stderr and cg.rel in out.stderr
    assert dockerd.inspect(cid, "{{.State.Paused}}") == "false"


def test_oom_kill_event_carries_the_name(dockerd: PrivateDockerd, agent: RunningAgent) -> None:
    cid = dockerd.run("hog", "sleep", "1000", options=("--memory", "16m",
                                                      "--memory-swap", "16m"))
    _wait_named(agent, cid, "hog")
    dockerd.docker("exec", cid, "sh", "-c", "head -c 200m /dev/zero | tail > /dev/null",
                   check=False)

    def oom() -> list[dict[str, Any]]:
        evs = agent.get("/api/v1/events?type=oom_kill&container=" + cid)["events"]
        return list(evs)

    evs = agent.wait_for(oom, 60)
    assert evs[0]["container"]["name"] == "hog"
    assert evs[0]["container"]["runtime"] == "docker"


def _by_cgroup(agent: RunningAgent, cid: str) -> dict[str, Any] | None:
    data = agent.get("/api/v1/containers?kind=container")
    return next((w for w in data["containers"] if w["cgroup"].endswith("/" + cid)), None)


def _api_up(agent: RunningAgent) -> str:
    line = next(x for x in agent.get_text("/metrics").splitlines()
                if x.startswith('container_agent_runtime_api_up{runtime="docker"}'))
    return line.split()[-1]


def _cycles_go_on(agent: RunningAgent) -> None:
    seq = agent.get("/healthz")["snapshot_seq"]
    agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq + 3, 60)


def test_ids_as_names_when_the_socket_is_missing(dockerd: PrivateDockerd,
                                                 tmp_path: Path) -> None:
    """Socket absent: the container is still listed (by id), one warning, api_up 0."""
    cid = dockerd.run("unnamed", "sleep", "1000")
    with running_agent({"interval": 1, "identity": {
            "docker_socket": str(tmp_path / "absent.sock"), "retry_interval": 0.5}},
            ready_timeout=READY_S) as agent:
        w = agent.wait_for(lambda: _by_cgroup(agent, cid), 60)
        assert w["name"] != "unnamed" and re.fullmatch(r"[0-9a-f]{12,64}", w["name"])
        assert _api_up(agent) == "0.0"
        _cycles_go_on(agent)
        assert agent.log().count("docker API unavailable") == 1


def test_socket_that_never_answers(dockerd: PrivateDockerd, tmp_path: Path) -> None:
    """A socket that accepts and never answers: api_up 0 after the 1 s limit, cycles go on."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(64)  # the kernel accepts; nobody ever reads or answers
    cid = dockerd.run("silent", "sleep", "1000")
    try:
        with running_agent({"interval": 1, "identity": {
                "docker_socket": str(tmp_path / "silent.sock"), "retry_interval": 0.5}},
            ready_timeout=READY_S) as a:
            agent = a
            agent.wait_for(lambda: _by_cgroup(agent, cid), 60)
            assert _api_up(agent) == "0.0"
            _cycles_go_on(agent)  # the cycle never calls the API: nothing to wait for
            assert agent.log().count("docker API unavailable") == 1
            assert "did not answer within 1 s" in agent.log()
    finally:
        silent.close()


def test_dockerd_stopped_keeps_cached_names(dockerd: PrivateDockerd, agent: RunningAgent) -> None:
    """dockerd hung (SIGSTOP): api_up 0, one warning, the cached name stays; back on SIGCONT."""
    cid = dockerd.run("steady", "sleep", "1000")
    _wait_named(agent, cid, "steady")
    assert dockerd.proc is not None
    warnings = agent.log().count("docker API unavailable")
    os.kill(dockerd.proc.pid, signal.SIGSTOP)
    try:
        agent.wait_for(lambda: _api_up(agent) == "0.0", 60)
        _cycles_go_on(agent)
        assert _listed(agent, cid)["name"] == "steady"
        assert agent.log().count("docker API unavailable") == warnings + 1
    finally:
        os.kill(dockerd.proc.pid, signal.SIGCONT)
    agent.wait_for(lambda: _api_up(agent) == "1.0", 60)
