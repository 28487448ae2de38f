"""podman containers (runc, cgroupfs manager) named by podman: from its storage on disk when
no API service runs, from its API socket when one does (then with labels, and control)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.agentd import RunningAgent, running_agent
from tests.support.podman import PodmanUnavailable, PrivatePodman, private_podman

#: The first cycle walks every cgroup of the host, which other test runs may fill: be patient.
READY_S = 120.0


@pytest.fixture(scope="module")
def podman() -> Iterator[PrivatePodman]:
    try:
        with private_podman() as p:
            yield p
    except PodmanUnavailable as e:
        pytest.skip(str(e))


def _listed(agent: RunningAgent, cid: str) -> dict[str, Any] | None:
    data = agent.get("/api/v1/containers?kind=container")
    return next((w for w in data["containers"] if w["id"] == cid), None)


def test_named_from_storage_without_a_service(podman: PrivatePodman) -> None:
    cid = podman.run("pm-disk", "sleep", "1000")
    with running_agent({"interval": 1, "identity": {
            "podman_socket": str(podman.workdir / "absent.sock"),
            "podman_storage": str(podman.root), "docker_socket": ""}},
            ready_timeout=READY_S) as agent:
        w = agent.wait_for(lambda: (x := _listed(agent, cid)) and x["name"] == "pm-disk" and x,
                           60)
        assert w["runtime"] == "podman"
        assert w["image"] == "localhost/local/busybox:1"
        out = agent.agentctl("ls")
        line = next(x for x in out.stdout.splitlines() if x.startswith(cid[:12]))
        assert line.split()[1:4] == ["pm-disk", "podman", "localhost/local/busybox:1"]
        # No service: a missing podman socket is normal, not worth a warning.
        assert "podman API unavailable" not in agent.log()


def test_named_and_paused_through_the_api(podman: PrivatePodman) -> None:
    podman.start_service()
    cid = podman.run("pm-api", "sleep", "1000", labels={"app": "shop"})
    with running_agent({"interval": 1, "identity": {
            "podman_socket": str(podman.socket), "podman_storage": "", "docker_socket": "",
            # podman's service forks work per request: slow on a loaded 2-core host.
            "api_timeout": 10}},
            ready_timeout=READY_S) as agent:
        w = agent.wait_for(lambda: (x := _listed(agent, cid)) and x["name"] == "pm-api" and x,
                           60)
        assert w["runtime"] == "podman"
        assert w["image"] == "localhost/local/busybox:1"
        assert w["labels"]["app"] == "shop"
        # /metrics: the agent's counters as the last cycle left them.
        agent.wait_for(lambda: 'container_agent_runtime_api_up{runtime="podman"} 1.0'
                       in agent.get_text("/metrics"), 15)
        out = agent.agentctl("freeze", "pm-api", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["via"] == "podman"
        assert podman.inspect(cid, "{{.State.Status}}") == "paused"
        out = agent.agentctl("thaw", "pm-api")
        assert out.returncode == 0, out.stderr
        assert podman.inspect(cid, "{{.State.Status}}") == "running"
