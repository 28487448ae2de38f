"""Freeze, thaw and kill through the workload's owner, so every tool on the host agrees.

Route per workload (`choose_route`):
- docker / podman containers: their API's pause, unpause, kill (`docker ps` says Paused);
- LXC containers: `lxc-freeze` / `lxc-unfreeze` / `lxc-stop --kill` (`lxc-info` says FROZEN);
- systemd units where systemd is PID 1 (>= 246): FreezeUnit, ThawUnit, KillUnit over D-Bus;
- everything else, and any target with `--cgroup`: the cgroup file (operations.py).
Each result carries `via` (the route taken), which the control event records. A runtime that
refuses is exit 1 with its own message; the workload is left as it was.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.control import operations
from agent.control.errors import ControlError
from agent.control.freeze_v2 import Progress
from agent.control.kill import all_pids
from agent.control.targets import Target
from agent.core.exit_codes import ExitCode
from agent.identity.engine_api import EngineApiError, EngineClient
from collectors.layout import CgroupLayout

CGROUP = "cgroup"


@dataclass(frozen=True, slots=True)
class Route:
    #: docker, podman, lxc, systemd or cgroup.
    via: str
    #: The owner's name for the workload (container id, LXC name, unit name).
    ref: str = ""
    client: EngineClient | None = None
    lxc_path: Path | None = None
    #: Why the cgroup file is used when an owner exists (shown in the result).
    note: str = ""


def _lxc_home(name: str, paths: tuple[Path, ...]) -> Path | None:
    for p in paths:
        if (p / name / "config").is_file():
            return p
    return None


def choose_route(
    target: Target,
    *,
    force_cgroup: bool,
    client_of: Callable[[str], EngineClient | None],
    lxc_paths: tuple[Path, ...],
    systemd_ok: Callable[[], tuple[bool, str]],
) -> Route:
    ident = target.identity
    if force_cgroup or ident is None or ident.cgroup != target.cgroup:
        return Route(CGROUP)
    if ident.runtime in ("docker", "podman"):
        client = client_of(ident.runtime)
        if client is not None:
            return Route(ident.runtime, ident.id, client=client)
        return Route(CGROUP, note=f"{ident.runtime} API unavailable")
    if ident.runtime == "lxc":
        home = _lxc_home(ident.name, lxc_paths)
        if home is not None and shutil.which("lxc-freeze"):
            return Route("lxc", ident.name, lxc_path=home)
        return Route(CGROUP, note="LXC tools or its lxcpath not found")
    if ident.runtime == "systemd":
        ok, why = systemd_ok()
        return Route("systemd", ident.name) if ok else Route(CGROUP, note=why)
    return Route(CGROUP)


def _api(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run an API call on the agent's loop from a worker thread; refusals -> exit 1."""
    try:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout + 1)
    except EngineApiError as e:
        raise ControlError(e.message) from None
    except TimeoutError:
        raise ControlError(f"the runtime did not answer within {timeout:g} s") from None


def _lxc(route: Route, tool: str, *extra: str, timeout: float) -> None:
    assert route.lxc_path is not None
    try:
        res = subprocess.run([tool, "-P", str(route.lxc_path), "-n", route.ref, *extra],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ControlError(f"{tool} did not finish within {timeout:g} s") from None
    except OSError as e:
        raise ControlError(f"cannot run {tool}: {e.strerror}") from None
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise ControlError(f"{tool}: {lines[-1] if lines else f'exit {res.returncode}'}")


def _frozen_result(target: Target, layout: CgroupLayout, route: Route, start: float,
                   unchanged: bool) -> dict[str, object]:
    state = operations.freeze_state(target, layout)
    return {
        "target": target.ref, "cgroup": target.cgroup, "freezer": route.via, "via": route.via,
        "path": route.ref, "frozen": state["frozen"], "unchanged": unchanged, "held_by": None,
        "duration_s": round(time.monotonic() - start, 6), "state": state,
    }


def freeze(target: Target, layout: CgroupLayout, route: Route, timeout: float,
           loop: asyncio.AbstractEventLoop, progress: Progress) -> dict[str, object]:
    from agent.control import systemd_dbus

    start = time.monotonic()
    progress(f"freezing {target.cgroup} through {route.via}")
    unchanged = False
    if route.client is not None:
        if _api(loop, route.client.paused(route.ref, timeout), timeout):
            unchanged = True
        else:
            _api(loop, route.client.pause(route.ref, timeout), timeout)
    elif route.via == "lxc":
        _lxc(route, "lxc-freeze", timeout=timeout)
    elif route.via == "systemd":
        state = systemd_dbus.unit_op(route.ref, "freeze", timeout)
        if state is None:
            return _cgroup_fallback("freeze", target, layout, timeout, progress)
    return _frozen_result(target, layout, route, start, unchanged)


def thaw(target: Target, layout: CgroupLayout, route: Route, timeout: float,
         loop: asyncio.AbstractEventLoop, policy: operations.Policy,
         progress: Progress) -> dict[str, object]:
    from agent.control import systemd_dbus

    start = time.monotonic()
    progress(f"thawing {target.cgroup} through {route.via}")
    unchanged = False
    if route.client is not None:
        if _api(loop, route.client.paused(route.ref, timeout), timeout):
            _api(loop, route.client.unpause(route.ref, timeout), timeout)
        else:
            unchanged = True
    elif route.via == "lxc":
        _lxc(route, "lxc-unfreeze", timeout=timeout)
    elif route.via == "systemd" and systemd_dbus.unit_op(route.ref, "thaw", timeout) is None:
        return _cgroup_fallback("thaw", target, layout, timeout, progress, policy)
    if operations.freeze_state(target, layout)["frozen"]:
        # Frozen behind the owner's back (e.g. `--cgroup`): undo that too.
        res = operations.thaw(target, layout, policy, timeout=timeout, progress=progress)
        unchanged = unchanged and bool(res["unchanged"])
    return _frozen_result(target, layout, route, start, unchanged)


def kill(target: Target, route: Route, timeout: float, loop: asyncio.AbstractEventLoop,
         progress: Progress) -> dict[str, object]:
    from agent.control import systemd_dbus

    start = time.monotonic()
    before = sorted(all_pids(target))
    progress(f"killing {target.cgroup} through {route.via}")
    if route.client is not None:
        _api(loop, route.client.kill(route.ref, timeout), timeout)
    elif route.via == "lxc":
        _lxc(route, "lxc-stop", "--kill", timeout=timeout)
    elif route.via == "systemd":
        systemd_dbus.unit_op(route.ref, "kill", timeout)
    deadline = start + timeout
    while (left := all_pids(target)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        raise ControlError(f"{target.cgroup}: {len(left)} process(es) still present after "
                           f"{timeout:g} s: {sorted(left)[:10]}", ExitCode.TIMED_OUT)
    return {"target": target.ref, "cgroup": target.cgroup, "method": f"{route.via} kill",
            "via": route.via, "killed": before,
            "duration_s": round(time.monotonic() - start, 6)}


def _cgroup_fallback(op: str, target: Target, layout: CgroupLayout, timeout: float,
                     progress: Progress,
                     policy: operations.Policy | None = None) -> dict[str, object]:
    progress(f"systemd older than {246}: using the cgroup file")
    pol = policy or operations.Policy()
    res = (operations.freeze(target, layout, pol, force=True, timeout=timeout, progress=progress)
           if op == "freeze" else
           operations.thaw(target, layout, pol, timeout=timeout, progress=progress))
    return {**res, "via": CGROUP}
