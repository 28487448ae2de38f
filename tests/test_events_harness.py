"""A real EventsComponent on a hand-built AgentContext (real store, real cgroup layout)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.core.component import AgentContext
from agent.core.store import Store
from agent.events.component import SETTINGS, EventsComponent
from agent.events.model import Event
from agent.model.snapshot import WorkloadIdentity
from collectors.layout import detect_layout
from collectors.samples import CgroupSample


@dataclass
class Harness:
    comp: EventsComponent
    ctx: AgentContext
    finals: list[tuple[WorkloadIdentity, CgroupSample]] = field(default_factory=list)

    def events(self, etype: str | None = None, container: str | None = None) -> list[Event]:
        """Every event emitted so far (waits for the store's writer to commit them)."""
        assert self.comp.log is not None
        self.ctx.store.flush()
        return self.comp.log.query(0, (etype,) if etype else (), container, 10_000)

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def started(tmp: Path, **settings: Any) -> AsyncIterator[Harness]:
    cfg = {k: s.default for k, s in SETTINGS.items()}
    cfg.update(settings)
    store = Store(tmp / "agent.db")
    ctx = AgentContext(
        config={"interval": 5, "events": MappingProxyType(cfg)},
        state_dir=tmp, layout=detect_layout(), store=store, loop=asyncio.get_running_loop(),
    )
    comp = EventsComponent()
    h = Harness(comp, ctx)
    ctx.final_sample_listeners.append(lambda who, s: h.finals.append((who, s)))
    await comp.start(ctx)
    try:
        yield h
    finally:
        await comp.stop()
        store.close()
