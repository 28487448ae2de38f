"""Which parts of the agent work: `container_agent_component_up{component}` and `agentctl host`.

A part is up while it has no fault. Faults come from where a part can fail: its start, a
background task that ended with an error, a thread that is no longer alive, a collect or
on_snapshot hook that raised (cleared by the next success of the same hook). Tasks and threads
are judged when health is read, so a part that died shows as 0 at the next scrape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("agent.health")


@dataclass(frozen=True, slots=True)
class PartHealth:
    component: str
    up: bool
    #: Why it is down ("" while up): "<source>: <reason>" for each fault.
    faults: tuple[str, ...]
    #: Wall clock (epoch s) of the last change between up and down.
    since: float


class ComponentHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, dict[str, str]] = {}
        self._since: dict[str, float] = {}
        self._probes: dict[tuple[str, str], Callable[[], str | None]] = {}
        #: Tasks kept referenced until they end (asyncio only keeps weak references).
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set at shutdown: tasks and threads that end then are not faults.
        self.stopping = False

    # -- reports ------------------------------------------------------------------------
    def register(self, component: str) -> None:
        """`component` exists and is up until a fault says otherwise."""
        with self._lock:
            if component not in self._faults:
                self._faults[component] = {}
                self._since[component] = time.time()

    def fault(self, component: str, source: str, reason: str) -> None:
        with self._lock:
            faults = self._faults.setdefault(component, {})
            was_up = not faults
            if faults.get(source) == reason:
                return
            faults[source] = reason
            if was_up:
                self._since[component] = time.time()
        if was_up:
            log.error("component %s down: %s: %s", component, source, reason)

    def clear(self, component: str, source: str) -> None:
        with self._lock:
            faults = self._faults.get(component)
            if not faults or faults.pop(source, None) is None:
                return
            back = not faults
            if back:
                self._since[component] = time.time()
        if back:
            log.info("component %s up again (%s recovered)", component, source)

    # -- what is judged when read -------------------------------------------------------
    def watch_thread(self, component: str, name: str, alive: Callable[[], bool]) -> None:
        """A thread `component` needs: a fault while `alive()` is False (and not stopping)."""
        self.register(component)
        self._probes[(component, f"thread {name}")] = (
            lambda: None if alive() or self.stopping else "not running")

    def spawn(self, component: str, coro: Coroutine[Any, Any, Any], name: str = "") -> (
            asyncio.Task[Any]):
        """Run `coro` as a task of `component`; an error ending it makes the component down."""
        self.register(component)
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        label = f"task {name or task.get_name()}"

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or self.stopping:
                return
            exc = t.exception()
            self.fault(component, label, f"died: {exc!r}" if exc else "ended")

        task.add_done_callback(done)
        return task

    def parts(self) -> list[PartHealth]:
        for (component, source), probe in list(self._probes.items()):
            try:
                reason = probe()
            except Exception as e:  # a probe must not take health reporting down
                reason = f"probe failed: {e!r}"
            if reason is None:
                self.clear(component, source)
            else:
                self.fault(component, source, reason)
        with self._lock:
            return [PartHealth(c, not f, tuple(f"{s}: {r}" for s, r in sorted(f.items())),
                               self._since[c])
                    for c, f in sorted(self._faults.items())]

    def metric_family(self) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(
            "container_agent_component_up",
            "1 while a part of the agent works; 0 when it failed to start or died",
            labels=["component"])
        for part in self.parts():
            fam.add_metric([part.component], 1 if part.up else 0)
        return fam

    def as_json(self) -> list[dict[str, object]]:
        return [{"component": p.component, "up": p.up, "faults": list(p.faults),
                 "since": round(p.since, 3)} for p in self.parts()]
