"""Waiting on PSI triggers: a thread blocked in epoll_wait, reporting to the event loop.

Why not `loop.add_reader` on a dedicated epoll's fd, as for other kernfs fds: a PSI trigger's
poll consumes its event (psi_trigger_poll does cmpxchg(&t->event, 1, 0)). When the loop's
epoll checks whether our nested epoll is ready, that check polls the trigger and swallows the
event, so our own epoll_wait then finds nothing [obs, 6.18: add_reader fired, poll(0) gave []].
A blocking epoll_wait in one thread polls each trigger once and gets the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable

from agent.kernel.fd_budget import OUT_OF_FDS, FdBudget
from agent.kernel.kernfs import GONE

log = logging.getLogger("agent.kernel.watch")


class PsiRefused(Exception):
    """The kernel refuses PSI triggers altogether (message: why): stop asking."""


def open_trigger(path: str, stall_us: int, window_us: int) -> int | None:
    """A trigger fd `some <stall> <window>` on `<res>.pressure`; None when the file or the
    cgroup is absent (or one trigger failed); PsiRefused when no trigger can work."""
    if not os.path.exists(path):
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in OUT_OF_FDS:
            raise  # the caller's fd budget says so, once
        if e.errno not in GONE:
            log.warning("PSI trigger on %s: %s", path, e)
        return None
    try:
        os.write(fd, f"some {stall_us} {window_us}\0".encode())
    except OSError as e:
        os.close(fd)
        if e.errno in GONE:
            return None
        if e.errno == errno.EOPNOTSUPP:
            raise PsiRefused("PSI is disabled in this kernel (EOPNOTSUPP)") from None
        if e.errno == errno.EINVAL:
            raise PsiRefused(
                f"PSI trigger 'some {stall_us} {window_us}' refused "
                "(without CAP_SYS_RESOURCE the window must be a multiple of 2 s)") from None
        raise PsiRefused(f"PSI trigger: {e.strerror}") from None
    return fd


#: Threads closing the triggers left at shutdown, and how long they may take in all.
SHUTDOWN_CLOSERS = 64
SHUTDOWN_CLOSE_S = 20.0


class PsiWaiter:
    def __init__(self, on_fire: Callable[[int, int], None], budget: FdBudget) -> None:
        """`on_fire(fd, mask)` runs on the event loop for each trigger that fired; each
        trigger discarded is given back to `budget` once closed."""
        self.on_fire = on_fire
        self.budget = budget
        self.epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_close: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Left running at shutdown: the process's exit closes what is still queued.
        threading.Thread(target=self._close_discarded, name="psi-close", daemon=True).start()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="psi-triggers", daemon=True)
        self._thread.start()

    def register(self, fd: int) -> None:
        # EPOLLPRI only: with EPOLLIN a kernfs fd is always ready.
        self.epoll.register(fd, select.EPOLLPRI)

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)

    def discard(self, fd: int) -> None:
        """Stop waiting on a trigger and close it in the closer thread: the kernel's
        psi_trigger_destroy waits for an RCU grace period (milliseconds, more under load),
        which must hold up neither the kernel watch nor the event loop."""
        self.unregister(fd)
        self._to_close.put(fd)

    def _close_discarded(self) -> None:
        while True:
            fd = self._to_close.get()
            with contextlib.suppress(OSError):
                os.close(fd)
            self.budget.give(1)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        if self._thread is not None:
            os.eventfd_write(self._wake, 1)
            self._thread.join(timeout=5)
            self._thread = None
        self.epoll.close()
        os.close(self._wake)
        self._drain_closes()

    def _drain_closes(self) -> None:
        """Close what is still queued from many threads at once: each close waits for an RCU
        grace period, and concurrent waiters share one. One by one, 1,000 cgroups' triggers
        kept agentd exiting for 30-190 s (the kernel's own exit closes them one by one too)."""
        pending = self._to_close.qsize()
        if not pending:
            return

        def drain() -> None:
            while True:
                try:
                    fd = self._to_close.get_nowait()
                except queue.Empty:
                    return
                with contextlib.suppress(OSError):
                    os.close(fd)

        closers = [threading.Thread(target=drain, name="psi-close", daemon=True)
                   for _ in range(min(SHUTDOWN_CLOSERS, pending))]
        for t in closers:
            t.start()
        deadline = time.monotonic() + SHUTDOWN_CLOSE_S
        for t in closers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                ready = self.epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed
            for fd, mask in ready:
                if fd == self._wake:
                    return
                if mask & select.EPOLLERR:
                    # The cgroup is gone; level-triggered POLLERR would spin: drop it here.
                    self.unregister(fd)
                try:
                    loop.call_soon_threadsafe(self.on_fire, fd, mask)
                except RuntimeError:
                    return  # the loop is closed
