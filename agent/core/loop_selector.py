"""The event loop's selector, which tells the agent's CPU-bound threads when the loop has work.

asyncio's loop calls `select()` once per step: the call is where it sleeps, the return where it
wakes with ready sockets or timers. Around that call the selector sets `Urgency.loop_busy`, so
a collection pass or a render gives way (agent.core.urgency) while the loop answers a scrape.
"""

from __future__ import annotations

import asyncio
import selectors

from agent.core.urgency import URGENT, Urgency


class SignallingSelector(selectors.DefaultSelector):
    def __init__(self, urgency: Urgency = URGENT) -> None:
        super().__init__()
        self._urgency = urgency

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        self._urgency.loop_sleeps()
        try:
            return super().select(timeout)
        finally:
            self._urgency.loop_woke()

    def close(self) -> None:
        """The loop is closed: nothing is left to give way to."""
        super().close()
        self._urgency.loop_sleeps()


def new_event_loop(urgency: Urgency = URGENT) -> asyncio.AbstractEventLoop:
    """A selector loop (asyncio's default on Linux) whose steps the urgency sees."""
    return asyncio.SelectorEventLoop(SignallingSelector(urgency))
