"""Work that must not wait for the GIL: a final read at `populated 0` races the runtime's rmdir.

Python threads share one GIL. A thread making many short syscalls (a final read: ~25 preads
across the hierarchies) waits for the GIL again after each one, up to the switch interval,
while a CPU-bound thread (a collection pass over 1,000 cgroups, a /metrics render) holds it:
its latency grows with the number of syscalls, not with their cost. So the long CPU-bound loops
give way: between items they check `pending` (an attribute read) and, while urgent work is
outstanding, wait on an event (which releases the GIL) until it is done, at most
GIVE_WAY_MAX_S at a time. One per process: the GIL it arbitrates is one per process too.

The event loop is urgent as well: a scrape or /healthz waits for the GIL at every recv and send
while a cycle holds it. The loop's selector (agent.core.loop_selector) says when the loop has
woken with work and when it sleeps again; while it works, the same loops wait for it, at most
LOOP_GIVE_WAY_MAX_S at a check. Its work comes in short steps (a request, a batch of notices),
so a cycle is delayed by about what the loop does, and no longer fights it for the GIL and a CPU.
A thread waits for the loop at most LOOP_GIVE_WAY_SHARE of each second: under a storm of
requests a cycle still ends in time (a stale snapshot would turn /healthz 503 and stop the
watchdog's pings).
"""

from __future__ import annotations

import threading
import time

#: The longest a loop waits for urgent work at one check (a stuck read costs no more).
GIVE_WAY_MAX_S = 0.02
#: The longest a loop waits at one check for the event loop to finish a step: a loop that never
#: sleeps (overloaded) slows a cycle to about one item per this, not to a stop.
LOOP_GIVE_WAY_MAX_S = 0.005
#: The most of each second a thread spends waiting for the event loop.
LOOP_GIVE_WAY_SHARE = 0.25


class Urgency:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outstanding = 0
        self._done = threading.Event()
        self._done.set()
        #: True while urgent work is queued or running (read without the lock: a stale
        #: value costs one check's priority, never correctness).
        self.pending = False
        #: Times a loop waited for urgent work (tests and benchmarks read it).
        self.waits = 0
        #: True from the event loop's wake-up to its next sleep (no lock, as `pending`).
        self.loop_busy = False
        self._loop_idle = threading.Event()
        self._loop_idle.set()
        #: Times a loop waited for the event loop's step.
        self.loop_waits = 0
        #: Per thread: [the second it is in (monotonic), seconds waited for the loop in it].
        self._loop_budget = threading.local()

    def loop_woke(self) -> None:
        """The event loop's selector returned: the loop runs callbacks now."""
        self.loop_busy = True

    def loop_sleeps(self) -> None:
        """The event loop is about to wait in its selector."""
        self.loop_busy = False
        if not self._loop_idle.is_set():  # set only when a loop waits: no lock otherwise
            self._loop_idle.set()

    def begin(self) -> None:
        """Urgent work was queued; call end() once per begin() when it is done."""
        with self._lock:
            self._outstanding += 1
            self.pending = True
            self._done.clear()

    def end(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding <= 0:
                self._outstanding = 0
                self.pending = False
                self._done.set()

    def give_way(self) -> None:
        """Called between the items of a long CPU-bound loop: waits while urgent work runs."""
        if self.pending:
            with self._lock:  # a waiting path: the lock costs nothing there, and no count is lost
                self.waits += 1
            self._done.wait(GIVE_WAY_MAX_S)
        elif self.loop_busy:
            self._wait_for_loop()

    def _wait_for_loop(self) -> None:
        now = time.monotonic()
        budget: list[float] | None = getattr(self._loop_budget, "second", None)
        if budget is None or now - budget[0] >= 1.0:
            budget = self._loop_budget.second = [now, 0.0]
        elif budget[1] >= LOOP_GIVE_WAY_SHARE:
            return  # this second's share is spent: the loop is shared again, as without this
        # Cleared before the second look: a loop_sleeps() in between is not missed.
        self._loop_idle.clear()
        if self.loop_busy:
            with self._lock:
                self.loop_waits += 1
            self._loop_idle.wait(LOOP_GIVE_WAY_MAX_S)
            budget[1] += time.monotonic() - now


URGENT = Urgency()
