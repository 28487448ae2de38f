"""Work that must not wait for the GIL: a final read at `populated 0` races the runtime's rmdir.

Python threads share one GIL. A thread making many short syscalls (a final read: ~25 preads
across the hierarchies) waits for the GIL again after each one, up to the switch interval,
while a CPU-bound thread (a collection pass over 1,000 cgroups, a /metrics render) holds it:
its latency grows with the number of syscalls, not with their cost. So the long CPU-bound loops
give way: between items they check `pending` (an attribute read) and, while urgent work is
outstanding, wait on an event (which releases the GIL) until it is done, at most
GIVE_WAY_MAX_S at a time. One per process: the GIL it arbitrates is one per process too.
"""

from __future__ import annotations

import threading

#: The longest a loop waits for urgent work at one check (a stuck read costs no more).
GIVE_WAY_MAX_S = 0.02


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
            self.waits += 1
            self._done.wait(GIVE_WAY_MAX_S)


URGENT = Urgency()
