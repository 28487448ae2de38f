"""The final read at `populated 0` runs in the kernel watch thread that took the notice, with
cgroupfs calls that keep the GIL; its delivery (which may wait for the rmdir probe) runs in the
final-read thread, and reads asked from elsewhere still go there."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

from agent.core.urgency import Urgency
from agent.kernel.final_read import FinalReadThread
from collectors import file_calls
from collectors.cgroupfs import CgroupReader
from collectors.file_calls import RELEASING
from collectors.layout import CgroupLayout, detect_layout
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory
from tests.test_events_harness import started

PY = sys.executable
SHORT_LIFE = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<0.05: pass"


class ThreadNoting(CgroupReader):
    """A real reader that notes, for each read, its thread and whether it keeps the GIL."""

    def __init__(self, layout: CgroupLayout) -> None:
        super().__init__(layout)
        self.reads: list[tuple[str, str, bool]] = []

    def read(self, path: str, *, member_pid: int | None = None,
             in_pass: bool = False) -> CgroupSample:
        self.reads.append((path, threading.current_thread().name,
                           file_calls.current() is not RELEASING))
        return super().read(path, member_pid=member_pid, in_pass=in_pass)


def test_the_watch_thread_reads_at_once_and_exactly(
        cgroups: CgroupFactory, tmp_path: Path) -> None:
    reader = ThreadNoting(detect_layout())

    async def body() -> tuple[list[tuple[str, str, bool]], int, int]:
        async with started(tmp_path, reader=reader) as h:
            cg = cgroups.create()
            assert h.comp.watcher is not None
            await h.wait_for(lambda: cg.rel in h.comp.watcher.cgroups)  # type: ignore[union-attr]
            proc = cg.spawn([PY, "-S", "-c", SHORT_LIFE])
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            stopped = await h.wait_for(lambda: h.events("container_stopped", cg.rel))
            kernel = cg.cpu_usage_usec()
            assert stopped[0].fields["final"] is True
            return ([r for r in reader.reads if r[0] == cg.rel],
                    stopped[0].fields["cpu_usage_usec"], kernel)

    try:
        reads, final_cpu, kernel = asyncio.run(body())
    finally:
        reader.close()
    assert final_cpu == kernel > 0
    assert reads and all(r == (reads[0][0], "kernel-watch", True) for r in reads), reads


def test_read_now_reads_in_the_callers_thread_and_delivers_in_its_own() -> None:
    reader = ThreadNoting(detect_layout())
    urgency = Urgency()
    reads = FinalReadThread(reader, urgency)
    delivered: list[tuple[str, bool | None]] = []
    done = threading.Event()

    def deliver(sample: CgroupSample) -> None:
        delivered.append((threading.current_thread().name, sample.cpu is not None))
        done.set()

    def caller() -> None:
        reads.read_now("/", time.monotonic_ns(), deliver)

    try:
        t = threading.Thread(target=caller, name="the-caller")
        t.start()
        t.join()
        assert done.wait(10)
        done.clear()
        reads.submit("/", time.monotonic_ns(), deliver)  # asked from elsewhere: its thread
        assert done.wait(10)
    finally:
        reads.close()
        reader.close()
    assert [r[1:] for r in reader.reads] == [("the-caller", False), ("final-read", True)]
    assert delivered == [("final-read", True), ("final-read", True)]
    assert reads.latency.count == 2
    assert not urgency.pending
