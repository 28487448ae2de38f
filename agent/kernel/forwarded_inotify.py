"""The kernel watch's inotify events as the final-read process forwards them.

The final-read process (agent.kernel.final_read_child) reads the watch's inotify fd in its
stead: at a `populated 0` it reads the cgroup's final sample at once, at real-time priority
with a GIL of its own, then sends the bytes it read with the reads they started. The watch
handles those bytes as if it had read them; when it asks for a final read at that
`populated 0`, the process's read is already there (`FinalReadProcess.submit` hands it over).
The reads of a batch come before its bytes, so a notice never finds its read still on the way.
If the process ends, the watch reads the fd itself again and rescans the tree: notices the
process had read but not forwarded are lost with it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping
from typing import Protocol

from collectors.inotify import IN_Q_OVERFLOW, InotifyEvent, inotify_events


class InotifySource(Protocol):
    """What forwards the inotify fd's bytes (FinalReadProcess)."""

    def start_forwarding(self, dirs: Mapping[int, str], wake: Callable[[], None]) -> bool:
        """Tell the directory watches, then start; `wake()` is called when bytes come or
        the forwarding ended. False: it cannot forward (then nothing changed)."""
        ...

    def tell_dir(self, wd: int, path: str) -> None:
        """A directory watch was added (its notices are forwarded without reads until told)."""
        ...

    def reset_dirs(self, dirs: Mapping[int, str]) -> None:
        """Tell the whole map of directory watches again: what it no longer names is
        forgotten (its removal's notices were lost in a queue overflow)."""
        ...

    def take(self) -> tuple[bytes, bool, bool]:
        """The bytes forwarded since the last take, whether the forwarding has ended (nothing
        more will come), and whether notices may have been lost with it (it did not end by
        close()). Their final reads are handed over until done()."""
        ...

    def done(self) -> None:
        """The bytes taken are handled: final reads of theirs not asked for are dropped."""
        ...

    def stop_forwarding(self) -> None:
        """No more wake() calls (the watch reads the fd itself from now on)."""
        ...


class ForwardedInotify:
    """The watch thread waits on `wake_fd`, then takes the forwarded events."""

    def __init__(self, source: InotifySource) -> None:
        self.source = source
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def start(self, dirs: Mapping[int, str]) -> bool:
        started = self.source.start_forwarding(
            dirs, functools.partial(os.eventfd_write, self.wake_fd, 1))
        if not started:
            os.close(self.wake_fd)
        return started

    def read_events(self) -> tuple[list[InotifyEvent], bool]:
        """The events forwarded so far, and whether the forwarding ended: if notices may have
        been lost with it, a queue overflow is added last, so that the tree is rescanned."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wake_fd)
        data, ended, lost = self.source.take()
        events = inotify_events(data)
        if lost:
            events.append(InotifyEvent(-1, IN_Q_OVERFLOW, 0, ""))
        return events, ended

    def close(self) -> None:
        self.source.stop_forwarding()
        os.close(self.wake_fd)
