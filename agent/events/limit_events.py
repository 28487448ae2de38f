"""The kernel watch's limit notices as events: memory and pids limits hit, OOM kills, pressure
over its trigger, freezes the kernel saw (said once when `agentctl` froze it too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import MappingProxyType

from agent.core.component import EmitEvent
from agent.events.lifecycle import pressure_fields
from agent.events.model import EventType
from agent.kernel.watched import PsiTrigger, WatchedCgroup
from agent.model.snapshot import WorkloadIdentity

#: Counter (source, key) -> event type; PER_UNIT types get one event per counted occurrence.
COUNTER_EVENTS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("memory.events", "high"): EventType.MEMORY_HIGH,
        ("memory.events", "max"): EventType.MEMORY_MAX,
        ("memory.events", "oom"): EventType.OOM,
        ("memory.events", "oom_kill"): EventType.OOM_KILL,
        ("memory.events", "oom_group_kill"): EventType.OOM_GROUP_KILL,
        ("memory.oom_control", "oom_kill"): EventType.OOM_KILL,
        ("memory.failcnt", "failcnt"): EventType.MEMORY_MAX,
        ("pids.events", "max"): EventType.PIDS_MAX,
    }
)
PER_UNIT = frozenset({EventType.OOM, EventType.OOM_KILL, EventType.OOM_GROUP_KILL})
#: More kills than this in one re-read are stored as one extra event carrying the rest.
MAX_PER_UNIT = 100
#: A control component's frozen/thawed and the kernel's for the same cgroup are one event.
_DEDUPE_S = 5.0
_FREEZE_GRACE_S = 0.5


class LimitEvents:
    """Turns the watch's counter, pressure and freeze notices into events (on the loop)."""

    def __init__(self, emit: EmitEvent) -> None:
        self.emit = emit
        #: (cgroup, frozen|thawed) -> when a control component said it.
        self._recent: dict[tuple[str, str], float] = {}

    def counter(self, cg: WatchedCgroup, source: str, key: str, delta: int, total: int) -> None:
        etype = COUNTER_EVENTS.get((source, key))
        if etype is None:
            return
        base = {"source": source, "counter": key}
        if etype not in PER_UNIT:
            self.emit(etype, cg.identity, "", {**base, "count": delta, "total": total})
            return
        for i in range(min(delta, MAX_PER_UNIT)):
            self.emit(etype, cg.identity, "", {**base, "total": total - delta + i + 1})
        if delta > MAX_PER_UNIT:
            self.emit(etype, cg.identity, "", {**base, "count": delta - MAX_PER_UNIT,
                                                "total": total, "coalesced": True})

    def pressure(self, cg: WatchedCgroup, res: str, text: str, psi: PsiTrigger | None) -> None:
        fields: dict[str, object] = {"resource": res}
        if psi is not None:
            fields.update(stall_us=psi.stall_us, window_us=psi.window_us)
        fields.update(pressure_fields(text))
        self.emit(EventType.PRESSURE, cg.identity, "", fields)

    def control_said(self, cgroup: str, etype: str) -> None:
        """A control component emitted frozen/thawed for this cgroup."""
        now = time.monotonic()
        if len(self._recent) > 1000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < _DEDUPE_S}
        self._recent[(cgroup, etype)] = now

    def frozen(self, cg: WatchedCgroup, frozen: bool, loop: asyncio.AbstractEventLoop) -> None:
        # A freeze by `agentctl freeze` is also emitted by the control component, with more
        # to say (outcome, duration): wait a moment and stay silent if it spoke.
        etype = EventType.FROZEN if frozen else EventType.THAWED
        loop.call_later(_FREEZE_GRACE_S, self._kernel_freeze, cg.identity, etype,
                        time.monotonic())

    def _kernel_freeze(self, who: WorkloadIdentity, etype: EventType, seen: float) -> None:
        said = self._recent.get((who.cgroup, str(etype)))
        if said is not None and abs(said - seen) < _DEDUPE_S:
            return
        self.emit(etype, who, "", {"source": "kernel"})
