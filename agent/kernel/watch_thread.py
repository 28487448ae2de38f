"""The thread that waits on the kernel watch's fds (inotify, v1 OOM eventfds).

Off the event loop on purpose: at `populated 0` the final read must start within a millisecond
or two, and the loop may be busy for longer (a scrape, an amend, a snapshot's bookkeeping).
Handlers run in this thread; whatever they share with the loop is under the watcher's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from agent.core.loop_post import poster_for
from agent.core.urgency import URGENT

log = logging.getLogger("agent.kernel.watch")
P = ParamSpec("P")
R = TypeVar("R")


class WatchThread:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._wake_tick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_tick, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None]] = {}
        #: Called every `tick_s` while it returns True (set and cleared in this thread only).
        self._ticker: Callable[[], bool] | None = None
        self._tick_s = 0.002
        self._urgency = URGENT
        self._ticking = False
        self._thread: threading.Thread | None = None
        #: Set at close: a handler in the middle of a burst stops early.
        self.closing = False

    @property
    def ident(self) -> int | None:
        return self._thread.ident if self._thread is not None else None

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        """Call `handler()` in this thread whenever `fd` is readable (any thread may add)."""
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def tick(self, ticker: Callable[[], bool], every_s: float) -> None:
        """Start calling `ticker()` in this thread every `every_s` until it returns False
        (any thread may call; it wakes the thread)."""
        self._ticker, self._tick_s = ticker, every_s
        os.eventfd_write(self._wake_tick, 1)

    def remove(self, fd: int) -> None:
        """Stop waiting on `fd`: call before closing it."""
        self._handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kernel-watch", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self.closing = True
        if self._thread is not None:
            os.eventfd_write(self._wake, 1)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            self._thread = None
        self._epoll.close()
        os.close(self._wake)
        os.close(self._wake_tick)

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            timeout = max(0.0, next_tick - time.monotonic()) if self._ticking else -1
            try:
                ready = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed
            # A notification may be a cgroup's `populated 0`: the loops that hold the GIL
            # for long give way until it is handled (agent.core.urgency).
            tick = self._ticking and time.monotonic() >= next_tick
            if tick:
                next_tick = time.monotonic() + self._tick_s
            self._urgency.begin()
            try:
                if self._handle(ready, tick):
                    return
            finally:
                self._urgency.end()

    def _handle(self, ready: list[tuple[int, int]], tick: bool) -> bool:
        """Run the ticker (when `tick`) and the handlers of the ready fds; True: closing."""
        if tick:
            ticker = self._ticker
            try:
                self._ticking = ticker is not None and ticker()
            except Exception:
                log.exception("kernel watch ticker failed")
                self._ticking = False
        for fd, _mask in ready:
            if fd == self._wake:
                return True
            if fd == self._wake_tick:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
                self._ticking = True  # only this thread sets it: no lost wake-up
                continue
            handler = self._handlers.get(fd)
            if handler is None:
                continue
            try:
                handler()
            except Exception:
                log.exception("kernel watch handler failed")
        return False


class LoopBridge:
    """The watch thread, the lock it shares with the loop, and calls from it onto the loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        #: Held by whoever changes what is watched: the watch thread or the event loop.
        self.lock = threading.RLock()
        self._thread = WatchThread()

    def alive(self) -> bool:
        """Whether the watch thread runs (it stops only at close, or on a bug)."""
        return self._thread.alive()

    def _tell(self, fn: Callable[..., None], *args: object) -> None:
        """Listeners live on the event loop: called there, from the watch thread too."""
        loop = self.loop
        if loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                poster_for(loop).post(fn, *args)

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        loop = self.loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_later(delay, fn, *args)
        else:
            with contextlib.suppress(RuntimeError):
                poster_for(loop).post(loop.call_later, delay, fn, *args)


def locked(method: Callable[P, R]) -> Callable[P, R]:
    """Run a watcher method under its `lock`: the watch thread and the loop both enter."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0].lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run
