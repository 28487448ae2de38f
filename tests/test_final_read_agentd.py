"""A real agentd reads cgroups' final samples in its final-read process (SCHED_FIFO); when that
process dies the events component shows it down while the reads go on in the agent, still
exact. With `final_read_process = false` the reads are in a thread."""

from __future__ import annotations

import json
import os
import re
import signal
import sys

from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.churn import final_read_process


def _final_cpu(agent: RunningAgent, cgroups: CgroupFactory, name: str,
               seconds: float = 0.05) -> tuple[int, int]:
    """One short life: the stopped event's final CPU and the kernel's last counter."""
    cg = cgroups.create(name)
    cg.spawn([sys.executable, "-S", "-c", "import time\nt=time.monotonic()\n"
              f"while time.monotonic()-t<{seconds}: pass"]).wait()

    def stopped() -> list[dict[str, object]]:
        r = agent.agentctl("events", "--type", "container_stopped", "--container", cg.rel,
                           "--json")
        assert r.returncode == 0, r.stderr
        return list(json.loads(r.stdout)["events"])

    [event] = agent.wait_for(stopped, timeout=20)
    fields = event["fields"]
    assert isinstance(fields, dict) and fields["final"] is True
    return int(fields["cpu_usage_usec"]), cg.cpu_usage_usec()


def _final_reads(agent: RunningAgent) -> dict[str, float]:
    """container_agent_final_reads_total by `where`."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^container_agent_final_reads_total\{where="([^"]+)"\} (\S+)$',
        agent.get_text("/metrics"), re.M)}


def _events_up(agent: RunningAgent) -> int:
    m = re.search(r'^container_agent_component_up\{component="events"\} (\d)',
                  agent.get_text("/metrics"), re.M)
    assert m is not None
    return int(m.group(1))


def test_final_reads_in_their_process_and_after_its_death(cgroups: CgroupFactory) -> None:
    with running_agent({"events": {"final_read_process": True}}) as agent:
        child = agent.wait_for(lambda: final_read_process(agent.proc.pid), timeout=10)
        assert os.sched_getscheduler(child) == os.SCHED_FIFO
        got, kernel = _final_cpu(agent, cgroups, "before")
        assert got == kernel > 0
        # The process reads the watch's notices: an end is read there at its notice.
        at_notice = _final_reads(agent)["at_notice"]
        got, kernel = _final_cpu(agent, cgroups, "at-notice", seconds=0.4)
        assert got == kernel > 0
        # /metrics has the agent's counters as the last cycle left them: within a cycle.
        agent.wait_for(lambda: _final_reads(agent)["at_notice"] > at_notice, timeout=10)
        os.kill(child, signal.SIGKILL)  # a process of the agentd this test started
        agent.wait_for(lambda: _events_up(agent) == 0, timeout=10)
        parts = {c["component"]: c for c in agent.get("/api/v1/host")["components"]}
        assert parts["events"]["up"] is False
        assert any("final-read" in f for f in parts["events"]["faults"]), parts["events"]
        reads = _final_reads(agent)
        got, kernel = _final_cpu(agent, cgroups, "after")  # read in the agent now
        assert got == kernel > 0
        after = agent.wait_for(
            lambda: (now := _final_reads(agent))["agent"] > reads["agent"] and now, timeout=10)
        assert after["at_notice"] == reads["at_notice"]
        assert final_read_process(agent.proc.pid) is None


def test_final_reads_in_a_thread_when_configured(cgroups: CgroupFactory) -> None:
    with running_agent({"events": {"final_read_process": False}}) as agent:
        assert final_read_process(agent.proc.pid) is None
        got, kernel = _final_cpu(agent, cgroups, "threaded")
        assert got == kernel > 0
        assert _events_up(agent) == 1
