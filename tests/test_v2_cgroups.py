"""The agent against real cgroup v2 controllers under systemd (the v2 guest only): what it reports
equals what the kernel's files say, and kernel notifications become events.

Workloads are transient systemd units (`systemd-run`): systemd creates their cgroups and enables
the controllers their properties ask for, as on any systemd host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.samples import UNLIMITED
from tests.support.v2guest import (
    CGROUP_ROOT,
    agentctl,
    cgroup_of,
    ensure_agent_running,
    events,
    get,
    require_guest,
    run,
    show,
    transient_scope,
    transient_service,
    wait_for,
    workload,
)

SLEEP = ["sleep", "100000"]


@pytest.fixture(autouse=True)
def agent() -> Iterator[None]:
    require_guest()
    ensure_agent_running()
    yield


def _kv_file(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def _sample(cgroup: str) -> dict[str, Any]:
    sample: dict[str, Any] = workload(cgroup)["sample"]
    return sample


def test_services_and_scopes_are_discovered() -> None:
    with transient_service(SLEEP) as svc, transient_scope(SLEEP) as (scope, _pid):
        svc_cg, scope_cg = cgroup_of(svc), cgroup_of(scope)
        w = workload(svc_cg)
        assert (w["kind"], w["runtime"], w["name"]) == ("service", "systemd", svc)
        listed = get("/api/v1/containers?kind=service")["containers"]
        assert svc_cg in {c["cgroup"] for c in listed}
        # systemd creates the scope's cgroup before it moves the process in: the agent may see
        # it empty first.
        s = wait_for(lambda: (x := workload(scope_cg))["state"] == "running" and x, 60,
                     "the scope running")
        # A scope of a process in the host's namespaces is a plain cgroup, named after the unit.
        assert (s["cgroup"], s["kind"], s["name"]) == (scope_cg, "cgroup", scope)
        assert s["pids"] >= 1


def test_memory_limits_and_oom_kill_from_memory_events() -> None:
    hog = "import itertools; b = [bytearray(1 << 20) for _ in itertools.count()]"
    # No MemoryHigh: reclaim throttling at memory.high slows a swapless hog to a crawl.
    props = ["MemoryMax=48M", "MemorySwapMax=0", "OOMPolicy=continue"]
    # The hog is OOM-killed once; the shell then stays, so the cgroup and its counters remain.
    with transient_service(["sh", "-c", f"python3 -c '{hog}'; exec sleep 100000"], props) as svc:
        cg = cgroup_of(svc)
        files = CGROUP_ROOT / cg.lstrip("/")
        wait_for(lambda: _kv_file(files / "memory.events")["oom_kill"] >= 1, 120, "an OOM kill")
        kernel = _kv_file(files / "memory.events")
        assert kernel["oom_kill"] == 1 and kernel["max"] > 0
        mem = wait_for(
            lambda: (m := _sample(cg)["memory"])["events"].get("oom_kill") == 1 and m, 60,
            "the agent's memory.events",
        )
        assert mem["max"] == 48 << 20 == int((files / "memory.max").read_text())
        assert (files / "memory.high").read_text().strip() == "max"
        assert mem["high"] == UNLIMITED
        assert mem["events"]["max"] == _kv_file(files / "memory.events")["max"] > 0
        assert mem["peak"] >= 32 << 20
        assert mem["stat"]["anon"] >= 0 and mem["current"] > 0
        stored = wait_for(lambda: events("oom_kill", cg), 60, "an oom_kill event")
        assert stored[0]["container"]["name"] == svc and stored[0]["fields"]["total"] == 1


def test_io_stat_on_the_virtio_disk_with_io_accounting() -> None:
    target = f"/var/tmp/ca-v2-io-{os.getpid()}"
    dd = f"dd if=/dev/zero of={target} bs=1M count=16 oflag=direct status=none; rm -f {target}"
    with transient_service(["sh", "-c", f"{dd}; exec sleep 100000"], ["IOAccounting=yes"]) as svc:
        cg = cgroup_of(svc)
        files = CGROUP_ROOT / cg.lstrip("/")
        assert "io" in (files.parent / "cgroup.subtree_control").read_text().split()
        root_dev = os.stat("/").st_dev
        major, minor = os.major(root_dev), os.minor(root_dev)

        def kernel_wbytes() -> int:
            for line in (files / "io.stat").read_text().splitlines():
                dev, *pairs = line.split()
                if dev == f"{major}:{minor}":
                    return int(dict(p.split("=") for p in pairs)["wbytes"])
            return 0

        wait_for(lambda: kernel_wbytes() >= 16 << 20, 120, "16 MiB written through io.stat")

        def agent_device() -> dict[str, Any] | None:
            for d in _sample(cg)["io"] or []:
                if (d["major"], d["minor"]) == (major, minor) and d["wbytes"] == kernel_wbytes():
                    return dict(d)
            return None

        dev = wait_for(agent_device, 60, "the agent's io.stat for the root disk")
        assert dev["wbytes"] >= 16 << 20 and dev["wios"] >= 16
        assert workload(cg)["io_write_bytes"] >= 16 << 20


def test_pids_limit_and_pids_max_event() -> None:
    # Python, not sh: a shell exits when a fork fails, and the unit with it.
    forks = (
        "import os, time\n"
        "for _ in range(8):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(100000)\n"
        "    except OSError:\n"
        "        pass\n"
        "time.sleep(100000)\n"
    )
    with transient_service(["python3", "-c", forks], ["TasksMax=4"]) as svc:
        cg = cgroup_of(svc)
        files = CGROUP_ROOT / cg.lstrip("/")
        wait_for(lambda: _kv_file(files / "pids.events")["max"] > 0, 60, "a refused fork")
        pids = wait_for(
            lambda: (p := _sample(cg)["pids"])["events_max"] == _kv_file(files / "pids.events")[
                "max"] and p, 60, "the agent's pids.events",
        )
        assert pids["max"] == 4 == int((files / "pids.max").read_text())
        assert pids["current"] == int((files / "pids.current").read_text()) <= 4
        assert wait_for(lambda: events("pids_max", cg), 60, "a pids_max event")


def test_freeze_by_the_agent_and_by_systemd() -> None:
    with transient_service(SLEEP) as svc:
        cg = cgroup_of(svc)
        files = CGROUP_ROOT / cg.lstrip("/")
        workload(cg)
        done = agentctl("freeze", cg, "-q")
        assert done.returncode == 0, done.stderr
        assert (files / "cgroup.freeze").read_text().strip() == "1"
        assert _kv_file(files / "cgroup.events")["frozen"] == 1
        wait_for(lambda: workload(cg)["state"] == "frozen", 60, "agent reports frozen")
        done = agentctl("thaw", cg, "-q")
        assert done.returncode == 0, done.stderr
        assert _kv_file(files / "cgroup.events")["frozen"] == 0
        # systemd's own freezer writes the same cgroup.freeze: the agent sees it as frozen.
        run(["systemctl", "freeze", svc])
        assert show(svc, "FreezerState")["FreezerState"] == "frozen"
        wait_for(lambda: workload(cg)["state"] == "frozen", 60, "frozen by systemd")
        run(["systemctl", "thaw", svc])
        wait_for(lambda: workload(cg)["state"] == "running", 60, "thawed by systemd")
        assert events("frozen", cg) and events("thawed", cg)


def test_kill_uses_cgroup_kill() -> None:
    with transient_service(["sh", "-c", "sleep 100000 & sleep 100000 & exec sleep 100000"]) as svc:
        cg = cgroup_of(svc)
        files = CGROUP_ROOT / cg.lstrip("/")
        assert (files / "cgroup.kill").exists()
        wait_for(lambda: len((files / "cgroup.procs").read_text().split()) == 3, 60, "3 tasks")
        done = agentctl("kill", cg, "-q")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: show(svc, "ActiveState")["ActiveState"] != "active", 60, "unit ended")
        assert wait_for(lambda: events("killed", cg), 60, "a killed event")


def test_cpu_pressure_trigger_becomes_an_event() -> None:
    # One spinner more than there are CPUs: some task is always waiting (cpu "some" pressure
    # near 100 %), far above the 150 ms per 2 s trigger.
    spinners = os.cpu_count() or 1
    loop = " ".join(["(while :; do :; done) &"] * (spinners + 1)) + " wait"
    with transient_service(["sh", "-c", loop], ["CPUAccounting=yes"]) as svc:
        cg = cgroup_of(svc)
        found = wait_for(
            lambda: [e for e in events("pressure", cg) if e["fields"]["resource"] == "cpu"],
            120, "a cpu pressure event",
        )
        assert found[0]["fields"]["stall_us"] == 150000


def test_runc_container_is_discovered() -> None:
    from tests.support.runc import runc_container

    with runc_container(args=["sleep", "100000"]) as c:
        w = wait_for(lambda: (x := workload(c.id))["runtime"] == "runc" and x, 60, "runc seen")
        assert (w["id"], w["kind"], w["cgroup"]) == (c.id, "container", c.cgroup)
        assert w["init_pid"] == c.init_pid and w["state"] == "running"
