"""A final read that finds its cgroup already removed looks for the CPU the rmdir kept (the eBPF
probe) on the event loop, for a short window: the final-read thread does not wait, so the reads
queued behind it go on. (Waiting in that thread let a second read of a life, whose rmdir value
the first had taken, hold every later read for the whole window: at 50 lives/s the queue grew
to a p50 of 0.4 s.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory
from tests.test_events_harness import started


def test_a_read_of_a_removed_cgroup_holds_up_no_read_behind_it(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as h:
            comp = h.comp
            probe = comp.rmdir.probe
            assert probe is not None, "the rmdir probe did not load (make builds it)"
            assert comp.watcher is not None and comp.final_reads is not None
            comp.rmdir.wait_s = 3.0  # a window no read queued behind could outlast
            gone, live = cgroups.create(), cgroups.create()
            watched = await h.wait_for(lambda: comp.watcher.cgroups.get(gone.rel))
            key = (watched.path, watched.inode)
            gone.remove()
            # Its rmdir's value is taken (as a first read of the life would have): a read of
            # it now finds nothing there, all through the window.
            assert probe.take(watched.inode) is not None
            watched.at_empty = None  # its counter not read at populated 0 (as when removed)
            comp._submit_final(watched)
            assert comp._final_pending[key] == 1
            seen: list[bool] = []
            done = threading.Event()

            def behind(sample: CgroupSample) -> None:
                seen.append(comp._final_pending.get(key, 0) > 0 and not sample.vanished)
                done.set()

            t0 = time.monotonic()
            comp.final_reads.submit(live.rel, time.monotonic_ns(), behind)
            await h.wait_for(done.is_set)
            assert seen == [True]  # read while the removed one still waited for its value
            await h.wait_for(lambda: key not in comp._final_pending, timeout=10)
            assert time.monotonic() - t0 > 2.0  # it waited out its window, on the loop

    asyncio.run(body())
