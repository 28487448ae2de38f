"""What an event is: one immutable record with a monotonically increasing id.

Ids come from the store (SQLite AUTOINCREMENT), so they never go back and are never reused, even
after retention deleted older rows: a client resuming from id N misses nothing still retained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from agent.model.snapshot import WorkloadIdentity


class EventType(StrEnum):
    CONTAINER_STARTED = "container_started"
    CONTAINER_STOPPED = "container_stopped"
    OOM = "oom"
    OOM_KILL = "oom_kill"
    OOM_GROUP_KILL = "oom_group_kill"
    MEMORY_HIGH = "memory_high"
    MEMORY_MAX = "memory_max"
    PIDS_MAX = "pids_max"
    CPU_THROTTLED = "cpu_throttled"
    PRESSURE = "pressure"
    FROZEN = "frozen"
    THAWED = "thawed"
    KILLED = "killed"
    CHECKPOINTED = "checkpointed"
    RESTORED = "restored"
    AGENT_STARTED = "agent_started"
    AGENT_STOPPED = "agent_stopped"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


DEFAULT_SEVERITY: Mapping[str, Severity] = MappingProxyType(
    {
        EventType.OOM: Severity.ERROR,
        EventType.OOM_KILL: Severity.ERROR,
        EventType.OOM_GROUP_KILL: Severity.ERROR,
        EventType.MEMORY_HIGH: Severity.WARNING,
        EventType.MEMORY_MAX: Severity.WARNING,
        EventType.PIDS_MAX: Severity.WARNING,
        EventType.CPU_THROTTLED: Severity.WARNING,
        EventType.PRESSURE: Severity.WARNING,
        EventType.KILLED: Severity.WARNING,
    }
)


def severity_for(etype: str, given: str = "") -> str:
    """The severity to store: the caller's when valid, else the type's default."""
    if given in Severity.__members__.values():
        return given
    return str(DEFAULT_SEVERITY.get(etype, Severity.INFO))


@dataclass(frozen=True, slots=True)
class EventContainer:
    """The container (workload) an event is about, as it was known when it happened."""

    id: str
    name: str
    runtime: str
    cgroup: str
    #: Directory inode of the cgroup: the incarnation key.
    inode: int
    kind: str = ""

    @classmethod
    def of(cls, who: WorkloadIdentity) -> EventContainer:
        return cls(who.id, who.name, who.runtime, who.cgroup, who.inode, str(who.kind))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "cgroup": self.cgroup,
            "inode": self.inode,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    #: Wall clock, ns since the epoch, when the agent saw the kernel's notification.
    ts_ns: int
    type: str
    severity: str
    container: EventContainer | None
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def time_iso(self) -> str:
        return datetime.fromtimestamp(self.ts_ns / 1e9, tz=UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time_iso,
            "ts_ns": self.ts_ns,
            "type": self.type,
            "severity": self.severity,
            "container": self.container.to_json() if self.container else None,
            "fields": dict(self.fields),
        }

    def summary(self) -> str:
        """One human line: what happened to whom (used by agentctl and Grafana text)."""
        who = ""
        if self.container is not None:
            who = f" {self.container.name or self.container.id} ({self.container.cgroup})"
        details = " ".join(f"{k}={v}" for k, v in self.fields.items() if not isinstance(v, dict))
        return f"{self.type}{who}{': ' + details if details else ''}"


def now_ns() -> int:
    return time.time_ns()
