"""How capabilities plug into the daemon.

A Component owns one capability (network, events, control, ledger, ...). The daemon calls, in
order: `start(ctx)` once; then each cycle `collect(ctx, snapshot_so_far)` in the worker thread
(blocking kernel reads belong here), whose result lands in `Snapshot.extras[name]`;
then `on_snapshot(snapshot)` on the event loop; `metric_families(snapshot)` at scrape time (must
not touch the kernel: read the snapshot); `routes()` (read-only, TCP and Unix socket) and
`control_routes()` (Unix socket only) once at start; `stop()` at shutdown.

Settings: each component declares its `[name]` TOML table as `settings`; the config loader
validates types and rejects unknown keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric

from agent.core.health import ComponentHealth
from agent.model.snapshot import Snapshot, WorkloadIdentity
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample

if TYPE_CHECKING:
    from aiohttp import web

    from agent.core.store import Store
    from agent.kernel.cgroup_watch import CgroupWatcher
    from collectors.cgroupfs import CgroupReader


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration key: its type, default, and an optional validator returning an error."""

    type: type | tuple[type, ...]
    default: Any
    help: str = ""
    check: Callable[[Any], str | None] | None = None


#: A listener for final samples: (workload, sample read at `populated 0`) -> None.
FinalSampleListener = Callable[[WorkloadIdentity, CgroupSample], None]

#: Signature of ctx.emit: (type, workload or None, severity, fields) -> None.
EmitEvent = Callable[[str, WorkloadIdentity | None, str, Mapping[str, object]], None]


def _log_event(
    etype: str, who: WorkloadIdentity | None, severity: str, fields: Mapping[str, object]
) -> None:
    logging.getLogger("agent.events").info(
        "event %s %s %s %s", etype, who.id if who else "-", severity, dict(fields)
    )


@dataclass(slots=True)
class AgentContext:
    """What a component may use. Created by the daemon; tests may build one directly."""

    #: All validated settings: top-level keys plus one mapping per component table.
    config: Mapping[str, Any]
    state_dir: Path
    layout: CgroupLayout
    store: Store
    loop: asyncio.AbstractEventLoop | None = None
    #: Emit an event. The events component replaces the default (a log line).
    emit: EmitEvent = _log_event
    #: The latest snapshot, or None before the first cycle.
    latest: Callable[[], Snapshot | None] = lambda: None
    #: Extra facts shown in /api/v1/host (CRIU version, ...). Components may add keys.
    host_facts: dict[str, object] = field(default_factory=dict)
    #: Ask the daemon to run a collection cycle soon (e.g. after a discovery event).
    request_cycle: Callable[[], None] = lambda: None
    #: Called (in whatever thread read it) with the final sample of a cgroup that emptied
    #: (`populated 0`), read before the runtime removes it. The ledger listens here.
    final_sample_listeners: list[FinalSampleListener] = field(default_factory=list)
    #: The daemon's cgroup reader (thread-safe), so components share its kept directory fds
    #: instead of opening a second set; None where a test builds the context without one.
    reader: CgroupReader | None = None
    #: The daemon's one kernel watch (inotify on the tree and watched files, PSI triggers,
    #: v1 OOM eventfds): components listen to it instead of watching the kernel themselves.
    watcher: CgroupWatcher | None = None
    #: The components running in this agent, by name (filled by the daemon before start()).
    components: dict[str, Component] = field(default_factory=dict)
    #: Adds what the runtimes say (name, image, labels) to a discovered identity; read by the
    #: collection cycle, so it must not block (the identity component sets a cache lookup).
    enrich_identity: Callable[[WorkloadIdentity], WorkloadIdentity] = lambda w: w
    #: Which parts work (`container_agent_component_up`): components run their background
    #: tasks through `health.spawn` and report their threads with `health.watch_thread`.
    health: ComponentHealth = field(default_factory=ComponentHealth)

    def publish_final_sample(self, who: WorkloadIdentity, sample: CgroupSample) -> None:
        for listener in list(self.final_sample_listeners):
            listener(who, sample)

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.config.get(name, MappingProxyType({}))
        assert isinstance(value, Mapping)
        return value


class Component:
    """Base class with no-op hooks; subclasses override what they need."""

    name: str = "component"
    settings: Mapping[str, Setting] = MappingProxyType({})
    #: True when metric_families() depends only on the snapshot: then it is rendered once per
    #: cycle in the collection thread instead of at every scrape.
    snapshot_metrics: bool = False

    async def start(self, ctx: AgentContext) -> None:
        return None

    def collect(self, ctx: AgentContext, snapshot: Snapshot) -> object | None:
        """Runs in the collection worker thread; `snapshot` holds this cycle's workloads."""
        return None

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        return None

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        return ()

    def describe(self, snapshot: Snapshot, workload_id: str) -> Mapping[str, object] | None:
        """Extra JSON for /api/v1/containers/{id} and `agentctl show` (e.g. interfaces)."""
        return None

    def routes(self) -> list[web.RouteDef]:
        return []

    def control_routes(self) -> list[web.RouteDef]:
        return []

    async def stop(self) -> None:
        return None
