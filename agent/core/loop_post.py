"""Calls from other threads onto the event loop, coalesced into one wake-up of the loop.

`loop.call_soon_threadsafe` writes to the loop's self-pipe on every call: a send (the posting
thread gives the GIL away and waits to take it back) and a wake-up of the loop (a step that
marks the loop busy, so the cycle's loops give way to it). Under churn the watch thread, the
store's writer and the final reads posted ~15 calls per container life, ~750 a second at 50
lives/s, most of them a few microseconds apart. A poster queues its calls, and only the first
call posted since the loop last ran them wakes it; that wake-up runs all of them, in the order
they were posted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable

log = logging.getLogger("agent.loop")

Call = tuple[Callable[..., object], tuple[object, ...]]


class LoopPoster:
    """Runs calls posted from any thread on `loop`, in the order they were posted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: Weak: poster_for's map holds posters by their loop, and a strong reference from
        #: the value would keep every loop (and its poster) alive for good.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._calls: deque[Call] = deque()
        #: A run of the queued calls is scheduled on the loop and has not taken them yet.
        self._scheduled = False
        #: Calls posted, and wake-ups of the loop they took (tests and benchmarks read them).
        self.posts = 0
        self.wakeups = 0

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Run fn(*args) on the loop soon. RuntimeError: the loop is closed (nothing queued)."""
        with self._lock:
            self._calls.append((fn, args))
            self.posts += 1
            if self._scheduled:  # the scheduled run takes this call too
                return
            self._scheduled = True
            self.wakeups += 1
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._calls.clear()
                self._scheduled = False
            raise

    def _run(self) -> None:
        """On the loop: every call posted so far; those posted meanwhile wake it again."""
        with self._lock:
            calls, self._calls = self._calls, deque()
            self._scheduled = False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:  # as the loop would for a callback: logged, the others run
                log.exception("callback %r posted to the event loop failed", fn)


_posters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPoster] = (
    weakref.WeakKeyDictionary())
_posters_lock = threading.Lock()


def poster_for(loop: asyncio.AbstractEventLoop) -> LoopPoster:
    """The loop's one poster: calls from every thread share its wake-ups."""
    with _posters_lock:
        poster = _posters.get(loop)
        if poster is None:
            poster = _posters[loop] = LoopPoster(loop)
        return poster
