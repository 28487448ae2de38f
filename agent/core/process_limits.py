"""Process-wide limits the agent sets for itself: open files and malloc behaviour."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import resource
import time

#: mallopt() parameter numbers (glibc malloc.h).
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL:
    """Looked up once: find_library runs ldconfig (~1 ms), and trim_malloc runs every cycle."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena and keeps freed memory in it; with a
    collection thread that builds ~10 MB of text per cycle that doubles RSS. One arena (the
    threads allocate under the GIL anyway, so they hardly contend for it) and a trim after
    each cycle keep the resident size close to what is live: bench_daemon 1000, 83.0 MiB with
    one arena against 86.5 MiB with two, same cycle CPU."""
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc()
        libc.mallopt(M_ARENA_MAX, 1)
        # A fixed mmap threshold: each scrape's multi-megabyte body is mmapped and handed back
        # when freed, instead of glibc raising the threshold and keeping it in the heap.
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def trim_malloc() -> None:
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


#: The open-file limit the agent asks for: systemd's default hard limit for services. The
#: reader keeps ~27 fds per cgroup on a hybrid host (6 directories, their counters) and the
#: kernel watch ~5 more: 5,000 cgroups need ~160,000.
WANTED_NOFILE = 1 << 19


def raise_nofile_limit(wanted: int = WANTED_NOFILE) -> int:
    """Raise RLIMIT_NOFILE to `wanted` (capped by fs.nr_open): the hard limit too where the
    process may (CAP_SYS_RESOURCE, as the root service is), else the soft one to the hard.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                wanted = min(wanted, int(f.read()))
        except (OSError, ValueError):
            pass
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


#: Allocations between young collections (CPython's default: 700). A cycle allocates and
#: frees ~100 objects per cgroup, nearly all without reference cycles: at 700, 1,000 cgroups
#: made CPython run 36 young, 3 middle and 0.3 full collections per second, 26 ms of CPU per
#: second in all, the full ones pausing every thread (the event loop too) for 40-95 ms.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Fewer collections: the cyclic collector is for cycles, and the agent makes few."""
    gc.set_threshold(*GC_THRESHOLDS)


class CycleCollector:
    """A full collection of reference cycles at least every `every_s` (after a cycle). With
    young collections only after 50,000 net allocations, cyclic garbage (a closed HTTP
    connection's socket, transport and protocol; parsed netlink messages) waited ~16 minutes
    under churn: 88 connections' worth every 40 s, the bulk of a soak's RSS growth. The
    collection walks only what is not frozen: a few ms a minute."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last = time.monotonic()
        #: Collections run, and objects they freed (tests read them).
        self.runs = 0
        self.freed = 0

    def maybe_collect(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        self.freed += gc.collect()
        self.runs += 1
        return True


def freeze_long_lived() -> None:
    """Move every object alive now (modules, classes, the agent's standing state after its
    first cycle) out of the collector's reach: full collections then walk only what came
    later. Frozen objects are still freed by reference counting when dropped."""
    gc.collect()
    gc.freeze()
