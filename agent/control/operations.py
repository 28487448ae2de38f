"""Freeze, thaw, kill and state of a resolved Target: freezer choice, policy, results as dicts.

Synchronous (they block on the kernel): the daemon runs them in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.control import freeze_v1, freeze_v2
from agent.control import kill as kill_mod
from agent.control.errors import ControlError
from agent.control.freeze_v2 import DEFAULT_TIMEOUT_S, FreezeResult, Progress, no_progress
from agent.control.protect import DEFAULT_PROTECTED, check_allowed
from agent.control.targets import Target, subtree_pids
from agent.core.exit_codes import ExitCode
from collectors.layout import CgroupLayout, LayoutKind

FREEZERS = ("auto", "v1", "v2")


@dataclass(frozen=True, slots=True)
class Policy:
    """What the operator configured: protected units, the default freezer and timeout."""

    protected: tuple[str, ...] = DEFAULT_PROTECTED
    freezer: str = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: The process whose cgroups are never frozen or killed (the agent).
    agent_pid: int = field(default_factory=os.getpid)


def _v2_dir(target: Target) -> Path | None:
    d = target.unified
    return d if d is not None and (d / "cgroup.freeze").exists() else None


def v1_covers_exactly(target: Target) -> bool:
    """The v1 freezer cgroup holds the same processes as the target (no more, no fewer)."""
    v1 = target.v1.get("freezer")
    if v1 is None:
        return False
    return set(subtree_pids(v1)) == set(subtree_pids(target.ref_dir))


def choose_freezer(target: Target, layout: CgroupLayout, wanted: str = "auto") -> tuple[str, Path]:
    """("v1"|"v2", directory) for `target`; see the package docstring for the rule."""
    if wanted not in FREEZERS:
        raise ControlError(f"freezer must be one of {', '.join(FREEZERS)}", ExitCode.USAGE)
    v2, v1 = _v2_dir(target), target.v1.get("freezer")
    if wanted == "v2" or (wanted == "auto" and layout.kind is LayoutKind.UNIFIED):
        if v2 is None:
            raise ControlError(f"{target.cgroup}: no cgroup2 freezer (cgroup.freeze) here")
        return "v2", v2
    if wanted == "v1":
        if v1 is None:
            raise ControlError(f"{target.cgroup}: not in a v1 freezer cgroup of its own")
        return "v1", v1
    if v1 is not None and (v2 is None or v1_covers_exactly(target)):
        return "v1", v1
    if v2 is not None:
        return "v2", v2
    raise ControlError(f"{target.cgroup}: no freezer can hold this cgroup")


def freeze_state(target: Target, layout: CgroupLayout) -> dict[str, object]:
    """Both freezers' views; `frozen` is true when either holds the workload."""
    out: dict[str, object] = {"target": target.ref, "cgroup": target.cgroup}
    frozen = False
    v2 = _v2_dir(target)
    if v2 is not None and layout.unified is not None:
        s2 = freeze_v2.state(v2, layout.unified)
        frozen = frozen or bool(s2["frozen"])
        out["v2"] = s2
    v1 = target.v1.get("freezer")
    if v1 is not None:
        s1 = freeze_v1.state(v1)
        frozen = frozen or bool(s1["frozen"])
        out["v1"] = s1
    out["frozen"] = frozen
    return out


def _result(target: Target, res: FreezeResult, d: Path, layout: CgroupLayout) -> dict[str, object]:
    return {
        "target": target.ref,
        "cgroup": target.cgroup,
        "freezer": res.freezer,
        "via": "cgroup",
        "path": str(d),
        "frozen": res.frozen,
        "unchanged": res.unchanged,
        "held_by": res.held_by,
        "duration_s": round(res.duration_s, 6),
        "state": freeze_state(target, layout),
    }


def freeze(
    target: Target,
    layout: CgroupLayout,
    policy: Policy,
    *,
    force: bool = False,
    freezer: str | None = None,
    timeout: float | None = None,
    progress: Progress = no_progress,
) -> dict[str, object]:
    if not force:  # the root first: it has no freezer to choose
        check_allowed(target, [], policy.protected, agent_pid=policy.agent_pid, verb="freeze")
    name, d = choose_freezer(target, layout, freezer or policy.freezer)
    if not force:
        check_allowed(target, [d], policy.protected, agent_pid=policy.agent_pid, verb="freeze")
    progress(f"freezing {target.cgroup} with the {name} freezer")
    t = policy.timeout_s if timeout is None else timeout
    res = freeze_v2.freeze(d, t, progress) if name == "v2" else freeze_v1.freeze(d, t, progress)
    return _result(target, res, d, layout)


def thaw(
    target: Target,
    layout: CgroupLayout,
    policy: Policy,
    *,
    timeout: float | None = None,
    progress: Progress = no_progress,
) -> dict[str, object]:
    """Undo whichever freezer holds the target (both when both do). Never refused."""
    t = policy.timeout_s if timeout is None else timeout
    results: list[tuple[FreezeResult, Path]] = []
    v2 = _v2_dir(target)
    if v2 is not None and layout.unified is not None:
        s2 = freeze_v2.state(v2, layout.unified)
        if s2["requested"] or s2["frozen"]:
            results.append((freeze_v2.thaw(v2, layout.unified, t, progress), v2))
    v1 = target.v1.get("freezer")
    if v1 is not None and freeze_v1.read_state(v1) != "THAWED":
        results.append((freeze_v1.thaw(v1, t, progress), v1))
    if not results:
        try:
            name, d = choose_freezer(target, layout, policy.freezer)
        except ControlError:  # nothing that could freeze it: nothing to thaw either
            name, d = "none", target.ref_dir
        return _result(target, FreezeResult(name, False, 0.0, unchanged=True), d, layout)
    d = results[-1][1]
    held = next((r.held_by for r, _ in results if r.held_by), None)
    merged = FreezeResult(
        "+".join(r.freezer for r, _ in results),
        any(r.frozen for r, _ in results),
        sum(r.duration_s for r, _ in results),
        unchanged=all(r.unchanged for r, _ in results),
        held_by=held,
    )
    return _result(target, merged, d, layout)


def kill(
    target: Target,
    policy: Policy,
    *,
    force: bool = False,
    timeout: float | None = None,
    method: str = "auto",
    progress: Progress = no_progress,
) -> dict[str, object]:
    if not force:
        check_allowed(
            target, target.dirs(), policy.protected, agent_pid=policy.agent_pid, verb="kill"
        )
    t = policy.timeout_s if timeout is None else timeout
    res = kill_mod.kill(target, t, progress, method)
    return {
        "target": target.ref,
        "cgroup": target.cgroup,
        "method": res.method,
        "via": "cgroup",
        "killed": list(res.pids),
        "duration_s": round(res.duration_s, 6),
    }
