"""An AgentContext for component tests: a real Store in a temp dir, the host's layout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agent.core.component import AgentContext
from agent.core.store import Store
from collectors.layout import detect_layout


@contextlib.contextmanager
def agent_context(state_dir: Path) -> Iterator[AgentContext]:
    store = Store(state_dir / "state.db")
    try:
        yield AgentContext(config={}, state_dir=state_dir, layout=detect_layout(), store=store)
    finally:
        store.close()
