"""A thread for the kernel watch's slow work, so that its own thread stays free for notices.

Under churn, a cgroupfs path lookup or a write that takes cgroup_mutex (a PSI trigger) waits
behind the runtime's mkdir/rmdir/attach for milliseconds, often tens of them [obs: the watch
thread spent 80 % of a 50 lives/s churn in D state in path lookups and `pressure_write`].
Work that can wait (PSI triggers, v1 controller files, counters re-read at the end) runs here,
in order of due time; the watch thread only takes notices and reads kept fds.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("agent.kernel.watch")


class DeferredWork:
    def __init__(self, name: str = "kernel-setup") -> None:
        self._queue: list[tuple[float, int, Callable[..., None], tuple[object, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, delay_s: float, fn: Callable[..., None], *args: object) -> None:
        """Run fn(*args) in this thread, not before `delay_s` from now (any thread may call)."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._queue, (time.monotonic() + delay_s, next(self._seq), fn, args))
            self._cond.notify()

    def close(self) -> None:
        """Stop; work still queued is dropped (what it would set up goes with the watch)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, fn, args = heapq.heappop(self._queue)
            try:
                fn(*args)
            except Exception:
                log.exception("deferred kernel watch work failed")
