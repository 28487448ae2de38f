"""container-agent.service under a real systemd on a pure cgroup v2 host (the v2 guest only):
Type=notify readiness after the first snapshot, reload without a restart, the sandbox online."""

from __future__ import annotations

import re
import subprocess

from tests.support.v2guest import (
    SERVICE,
    get,
    healthz_status,
    require_guest,
    run,
    show,
    wait_for,
)
from tests.test_systemd_unit import MAX_EXPOSURE


def test_start_returns_only_after_the_first_snapshot() -> None:
    require_guest()
    run(["systemctl", "stop", SERVICE], timeout=120)
    assert show(SERVICE, "ActiveState")["ActiveState"] == "inactive"
    # Type=notify: `systemctl start` blocks until READY=1, which the agent sends after
    # publishing its first snapshot; so the API must serve one the moment start returns.
    run(["systemctl", "start", SERVICE], timeout=180)
    assert healthz_status() == 200
    health = get("/healthz")
    assert health["status"] == "ok" and health["snapshot_seq"] >= 1
    state = show(SERVICE, "ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["Type"] == "notify"
    # STATUS= from the agent reaches systemd.
    status = wait_for(lambda: show(SERVICE, "StatusText")["StatusText"], 60, "StatusText")
    assert "workloads" in status


def test_agent_sees_the_v2_host_from_inside_its_sandbox() -> None:
    require_guest()
    run(["systemctl", "start", SERVICE], timeout=180)
    host = get("/api/v1/host")
    assert host["cgroup_layout"] == "unified"
    own = show(SERVICE, "ControlGroup")["ControlGroup"]
    me = get("/api/v1/containers/" + SERVICE)
    assert me["cgroup"] == own and me["kind"] == "service" and me["runtime"] == "systemd"
    # MemoryMax=1G and TasksMax=256 from the unit, read back through memory.max and pids.max.
    assert me["sample"]["memory"]["max"] == 1 << 30
    assert me["sample"]["pids"]["max"] == 256
    assert me["sample"]["memory"]["current"] > 0 and me["sample"]["pids"]["current"] >= 1


def test_reload_keeps_the_same_process_running() -> None:
    require_guest()
    run(["systemctl", "start", SERVICE], timeout=180)
    before = show(SERVICE, "MainPID", "NRestarts")
    seq = get("/healthz")["snapshot_seq"]
    run(["systemctl", "reload", SERVICE], timeout=120)
    after = show(SERVICE, "MainPID", "NRestarts", "ActiveState")
    assert after["ActiveState"] == "active"
    assert after["MainPID"] == before["MainPID"] != "0"
    assert after["NRestarts"] == before["NRestarts"]
    # Still collecting after the reload.
    wait_for(lambda: get("/healthz")["snapshot_seq"] > seq, 60, "a new snapshot after reload")
    log = run(["journalctl", "-u", SERVICE, "--no-pager", "-o", "cat", "-n", "200"])
    assert re.search(r"reload", log, re.I), log[-2000:]


def test_security_exposure_of_the_running_unit() -> None:
    require_guest()
    proc = subprocess.run(
        ["systemd-analyze", "security", "--no-pager", SERVICE],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE
