"""A cgroup's final CPU counter from its rmdir (collectors.final_cpu), for the lifecycle.

When a runtime removes a cgroup at once, the final read at `populated 0` finds its files gone
(or never gets the notice): what the kernel counted is then only known from the eBPF program
that ran inside the rmdir. Its value is what cpu.stat would have shown at the rmdir, so it
stands for the final read's CPU (a CPU-only final, like the read from the kept fd at
`populated 0`, which it beats: that one can miss the exiting task's last slice).
"""

from __future__ import annotations

import logging
import time

from agent.kernel.watched import WatchedCgroup
from collectors.final_cpu import ProbeUnavailable, RmdirCpuProbe
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample, CpuSample

log = logging.getLogger("agent.events")


class RmdirFinals:
    def __init__(self, wait_s: float = 0.02, poll_s: float = 0.001) -> None:
        self.probe: RmdirCpuProbe | None = None
        self.wait_s = wait_s
        self.poll_s = poll_s

    def open(self, layout: CgroupLayout, enabled: bool) -> str:
        """Load the probe where it can run; what /api/v1/host says of it ("ebpf", or
        "off: <why>"). Blocking: call it in a thread."""
        if not enabled:
            return "off: events.rmdir_probe = false"
        if layout.unified is None:
            return "off: no cgroup2 hierarchy (CPU comes from cpuacct)"
        try:
            self.probe = RmdirCpuProbe.open()
        except ProbeUnavailable as e:
            log.info("final CPU at rmdir not kept: %s", e)
            return f"off: {e}"
        return "ebpf"

    def sample(self, cg: WatchedCgroup) -> CgroupSample | None:
        """The counter kept at `cg`'s rmdir as a CPU-only final sample (taken: once only), or
        None: no probe, or not (yet) there. A reader that saw the cgroup's files vanish can be
        a few µs ahead of the rmdir's tracepoint: the caller looks again every `poll_s` for
        `wait_s` (EventsComponent._after_read, on the event loop)."""
        return self.take(cg.path, cg.inode)

    def take(self, path: str, inode: int) -> CgroupSample | None:
        """The counter kept at the rmdir of `path`'s incarnation `inode` (see sample)."""
        probe = self.probe
        got = probe.take(inode) if probe is not None else None
        if got is None:
            return None
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: the rmdir's wall time from the same offset.
        wall = time.time_ns() - (time.monotonic_ns() - got.at_ns)
        return CgroupSample(path, inode, got.at_ns, wall,
                            cpu=CpuSample(usage_usec=got.usage_usec), populated=False)

    def id_by_path(self, path: str) -> int | None:
        """The inode of the cgroup last removed at `path` (nothing taken), or None: for a
        cgroup known only by its path (made and removed before the watch saw it)."""
        return self.probe.id_by_path(path) if self.probe is not None else None

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None
