"""Final reads in a process of their own (agent.kernel.final_read_child), its own GIL.

In the agent a final read waits for the GIL after each syscall behind the collection, the
event loop and the watch: ~0.2 ms of CPU took 8-10 ms at p99 under churn. The watch thread
writes the job to the process's stdin (a non-blocking pipe, the GIL kept: collectors.held_io)
and goes on; the process reads the cgroup and sends the sample back, with the time the read
finished (CLOCK_MONOTONIC is one clock for both). A thread here takes the results and hands
each to its `deliver`, as FinalReadThread does.

Nothing is lost when the process cannot be used: a job that does not fit the pipe, or comes
while the process is not running, goes to the in-process FinalReadThread; the jobs it had not
answered when it died go there too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable

from agent.kernel.final_read import FinalRead, FinalReadThread, LatencyHistogram
from agent.kernel.final_read_wire import (
    decode_result,
    encode_job,
    encode_setup,
    result_frames,
)
from collectors import held_io
from collectors.cgroupfs import CgroupReader
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample

log = logging.getLogger("agent.kernel.final_read")

#: How long close() waits for the process to exit once its stdin is closed.
_EXIT_WAIT_S = 5.0


class FinalReadProcess:
    """FinalReadThread's interface; the reads are done by a child process."""

    def __init__(self, layout: CgroupLayout, fallback: FinalReadThread,
                 realtime: bool = True) -> None:
        """`realtime`: the process runs at SCHED_FIFO 1 (where allowed)."""
        self.fallback = fallback
        #: One histogram for every final read, the process's and the fallback's.
        self.latency: LatencyHistogram = fallback.latency
        #: Jobs sent to the process and not yet answered, by id.
        self._jobs: dict[int, FinalRead] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._running = False
        self._closing = False
        #: Jobs the process could not take (pipe full, path too long, not running).
        self.handed_back = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.kernel.final_read_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        self._stdin.write(encode_setup(layout, realtime))
        self._stdin.flush()
        os.set_blocking(self._stdin.fileno(), False)
        self._running = True
        self._thread = threading.Thread(target=self._results, name="final-read-results",
                                        daemon=True)
        self._thread.start()

    @property
    def reader(self) -> CgroupReader:
        """The in-process reader (its fds are released when a cgroup goes)."""
        return self.fallback.reader

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, path: str, notified_ns: int,
               deliver: Callable[[CgroupSample], None]) -> None:
        """Called in the watch thread: the write keeps the GIL, so the job is in the pipe
        before any other thread of the agent runs."""
        if self._closing:
            return  # stopping: dropped, as the jobs still queued are
        job_id = 0
        with self._lock:
            running = self._running
            if running:
                self._next_id += 1
                job_id = self._next_id
                self._jobs[job_id] = FinalRead(path, notified_ns, deliver)
        frame = encode_job(job_id, notified_ns, path) if running else None
        if frame is not None:
            try:
                held_io.write(self._stdin.fileno(), frame)
                return
            except (OSError, ValueError):  # full (the process is behind), gone, or closed
                pass
        if running:
            with self._lock:
                if self._jobs.pop(job_id, None) is None:
                    return  # the process died meanwhile and its jobs were handed back
        self.handed_back += 1
        self.fallback.submit(path, notified_ns, deliver)

    def alive(self) -> bool:
        """The process runs and its results are taken."""
        return self._running and self._thread.is_alive()

    def close(self) -> None:
        # Jobs not answered by now are dropped, as FinalReadThread drops its queue.
        self._closing = True
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self._proc.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(timeout=_EXIT_WAIT_S)
        self._stdout.close()
        self.fallback.close()

    def _results(self) -> None:
        frames = result_frames()
        fd = self._stdout.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                for _, body in frames.feed(data):
                    self._answer(body)
        except Exception:
            log.exception("final-read process results failed")
        finally:
            self._ended()

    def _answer(self, body: bytes) -> None:
        job_id, finished_ns, sample, error = decode_result(body)
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if sample is None:  # a bug in the process's read: the agent's reader tries it
            log.error("final read of %s failed in the final-read process: %s", job.path, error)
            self.fallback.submit(job.path, job.notified_ns, job.deliver)
            return
        self.latency.observe((finished_ns - job.notified_ns) / 1e9)
        try:
            job.deliver(sample)
        except Exception:
            log.exception("final sample of %s not delivered", job.path)

    def _ended(self) -> None:
        """The process exited (or its results cannot be read): its jobs go to the thread."""
        with self._lock:
            self._running = False
            jobs = list(self._jobs.values())
            self._jobs.clear()
        if self._closing:
            return
        rc = self._proc.poll()
        log.error("final-read process %d ended (exit status %s): final reads are done in the "
                  "agent from now on", self._proc.pid, rc)
        for job in jobs:
            self.fallback.submit(job.path, job.notified_ns, job.deliver)
