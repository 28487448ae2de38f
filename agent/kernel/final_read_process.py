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

Handed the kernel watch's inotify fd (`inotify_fd`), the process reads it for the watch and
starts a final read at each `populated 0` itself (agent.kernel.forwarded_inotify): this class
is then the watch's InotifySource, and `submit` hands over the read the process already did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

from agent.kernel.final_read import FinalRead, FinalReadThread, LatencyHistogram
from agent.kernel.final_read_wire import (
    ANSWER,
    CONTROL,
    FORWARD,
    READY,
    RESET_DIRS,
    RESET_DONE,
    START_FORWARDING,
    EarlyRead,
    Frames,
    PackedRead,
    Result,
    decode_frame,
    decode_result,
    encode_job,
    encode_setup,
    result_frames,
    unpack_read,
)
from collectors import held_io
from collectors.cgroupfs import CgroupReader
from collectors.layout import CgroupLayout
from collectors.samples import CgroupSample

log = logging.getLogger("agent.kernel.final_read")

#: How long close() waits for the process to exit once its stdin is closed.
_EXIT_WAIT_S = 5.0
#: How long a read the process did itself is kept for the watch to ask for (or ask again).
EARLY_KEEP_NS = 5_000_000_000


def _covers(done: int | None, at_empty: CgroupSample | None) -> bool:
    """A read's CPU counter (`done`) is at least `at_empty`'s: no task ran after it was read."""
    seen = at_empty.cpu.usage_usec if at_empty is not None and at_empty.cpu is not None else None
    return done is not None and seen is not None and done >= seen


class FinalReadProcess:
    """FinalReadThread's interface; the reads are done by a child process."""

    def __init__(self, layout: CgroupLayout, fallback: FinalReadThread,
                 realtime: bool = True, inotify_fd: int | None = None) -> None:
        """`realtime`: the process runs at SCHED_FIFO 1 (where allowed). `inotify_fd`: the
        kernel watch's, inherited, for start_forwarding (cgroup2 only)."""
        self.fallback = fallback
        #: One histogram for every final read, the process's and the fallback's.
        self.latency: LatencyHistogram = fallback.latency
        #: Jobs sent to the process and not yet answered, by id.
        self._jobs: dict[int, FinalRead] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        #: Held for every write to the process: a frame of the map is never torn by a job's.
        self._write_lock = threading.Lock()
        self._running = False
        self._closing = False
        #: Jobs the process could not take (pipe full, path too long, not running).
        self.handed_back = 0
        #: Final reads the process did at a `populated 0` it read itself, handed over; and
        #: those it did when asked.
        self.early_reads = 0
        self.answered = 0
        #: Directory watches the process was not told of (its pipe full): their notices come
        #: without a read, which is then asked for.
        self.dirs_untold = 0
        self._can_forward = inotify_fd is not None and layout.unified is not None
        self._wake: Callable[[], None] | None = None
        #: Forwarded bytes not taken yet.
        self._chunks: list[bytes] = []
        #: The reads the process did itself, by path (the latest), for EARLY_KEEP_NS, each
        #: with the number of the take() that hands over the bytes it came with and whether
        #: it was handed over; `_handling`: that take's number while the watch handles its
        #: bytes (0: none). Packed: unpickled only when handed over.
        self._early: dict[str, tuple[PackedRead, int, bool]] = {}
        self._takes = 0
        self._handling = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.kernel.final_read_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            pass_fds=(inotify_fd,) if self._can_forward and inotify_fd is not None else (),
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        self._stdin.write(encode_setup(layout, realtime,
                                       inotify_fd if self._can_forward else None))
        self._stdin.flush()
        os.set_blocking(self._stdin.fileno(), False)
        frames = result_frames()
        self._ready(frames)
        self._running = True
        self._thread = threading.Thread(target=self._results, args=(frames,),
                                        name="final-read-results", daemon=True)
        self._thread.start()

    def _ready(self, frames: Frames) -> None:
        """Waits for the process to say it is ready to read (so the map written next does not
        wait on its start-up); OSError when it exited instead."""
        fd = self._stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                rc = self._proc.wait()
                self._stdout.close()
                self._stdin.close()
                raise OSError(f"the final-read process exited at its start (status {rc})")
            for _, body in frames.feed(data):
                if decode_frame(body)[0] == READY:
                    return

    @property
    def reader(self) -> CgroupReader:
        """The in-process reader (its fds are released when a cgroup goes)."""
        return self.fallback.reader

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, path: str, notified_ns: int, deliver: Callable[[CgroupSample], None],
               at_empty: CgroupSample | None = None) -> None:
        """Called in the watch thread: the write keeps the GIL, so the job is in the pipe
        before any other thread of the agent runs. A read the process already did of this
        end (forwarding) is delivered instead: see _early_read."""
        if self._closing:
            return  # stopping: dropped, as the jobs still queued are
        early = self._early_read(path, at_empty)
        if early is not None:
            (read_ns, finished_ns, sample), again = early
            if not again:  # asked again for the same end (a later notice): counted once
                self._count_early(read_ns, finished_ns)
            try:
                deliver(sample)
            except Exception:
                log.exception("final sample of %s not delivered", path)
            return
        job_id = 0
        with self._lock:
            running = self._running
            if running:
                self._next_id += 1
                job_id = self._next_id
                self._jobs[job_id] = FinalRead(path, notified_ns, deliver)
        frame = encode_job(job_id, notified_ns, path) if running else None
        if frame is not None and self._write_frame(frame):
            return
        if running:
            with self._lock:
                if self._jobs.pop(job_id, None) is None:
                    return  # the process died meanwhile and its jobs were handed back
        self.handed_back += 1
        self.fallback.submit(path, notified_ns, deliver)

    def read_counts(self) -> dict[str, int]:
        return {"at_notice": self.early_reads, "process": self.answered,
                "agent": self.fallback.reads}

    def _write_frame(self, frame: bytes) -> bool:
        """One frame (<= PIPE_BUF: whole or not at all), the GIL kept; False when refused."""
        with self._write_lock:
            try:
                held_io.write(self._stdin.fileno(), frame)
                return True
            except (OSError, ValueError):  # full (the process is behind), gone, or closed
                return False

    # -- forwarding the kernel watch's inotify fd (InotifySource) ---------------------------
    def start_forwarding(self, dirs: Mapping[int, str], wake: Callable[[], None]) -> bool:
        if not self._can_forward or not self._running or self._closing:
            return False
        with self._lock:
            self._wake = wake
        try:
            self._write_map(dirs, (), (START_FORWARDING,))
        except OSError as e:
            log.error("final-read process not told the watches (%s): the watch reads its"
                      " notices itself", e)
            with self._lock:
                self._wake = None
            return False
        return True

    def reset_dirs(self, dirs: Mapping[int, str]) -> None:
        try:
            self._write_map(dirs, (RESET_DIRS,), (RESET_DONE,))
        except OSError as e:  # the process is gone: the watch hears of it and reads itself
            log.warning("final-read process not told the watches again: %s", e)

    def _write_map(self, dirs: Mapping[int, str], before: tuple[int, ...],
                   after: tuple[int, ...]) -> None:
        """The map of directory watches as control frames, between the control frames
        `before` and `after`; all of it (the process reads it now), or OSError."""
        told = [*((n, "") for n in before), *dirs.items(), *((n, "") for n in after)]
        data = memoryview(b"".join(f for number, path in told
                                   if (f := encode_job(CONTROL, number, path)) is not None))
        fd = self._stdin.fileno()
        with self._write_lock:
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    select.select([], [fd], [], 1.0)

    def tell_dir(self, wd: int, path: str) -> None:
        frame = encode_job(CONTROL, wd, path)
        if frame is None or not self._write_frame(frame):
            self.dirs_untold += 1

    def take(self) -> tuple[bytes, bool, bool]:
        with self._lock:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._takes += 1
            self._handling = self._takes
            return data, not self._running, not self._running and not self._closing

    def done(self) -> None:
        self._handling = 0

    def _early_read(self, path: str, at_empty: CgroupSample | None
                    ) -> tuple[EarlyRead, bool] | None:
        """The process's read of the end the watch saw, if it has one, and whether it was
        handed over before: the read that came with the notice being handled, or one whose
        CPU counter is at least the one the watch read at empty (`at_empty`: no task ran
        since, so it is this life's end; a cgroup made again at the path has another inode)."""
        with self._lock:
            entry = self._early.get(path)
            if entry is None:
                return None
            packed, took, handed = entry
            _, _, inode, usage, _ = packed
            if at_empty is not None and None not in (at_empty.inode, inode) \
                    and at_empty.inode != inode:
                return None
            if took != self._handling and not _covers(usage, at_empty):
                return None
            if not handed:
                self._early[path] = (packed, took, True)
        return unpack_read(packed), handed

    def take_early(self, path: str, unknown: Callable[[int], bool]) -> CgroupSample | None:
        with self._lock:
            entry = self._early.get(path)
        inode = entry[0][2] if entry is not None else None
        if entry is None or entry[2] or inode is None or not unknown(inode):
            return None
        with self._lock:  # `unknown` is the caller's: not called under this lock
            if self._early.get(path) is not entry:
                return None  # a newer read came meanwhile: the next look takes it
            self._early[path] = (entry[0], entry[1], True)
        read_ns, finished_ns, sample = unpack_read(entry[0])
        self._count_early(read_ns, finished_ns)
        return sample

    def _count_early(self, read_ns: int, finished_ns: int) -> None:
        """One of the process's own reads handed over: counted, and its latency observed."""
        self.early_reads += 1
        self.latency.observe((finished_ns - read_ns) / 1e9)

    def _hand_over(self, path: str, read_ns: int) -> bool:
        """The process's read of `path` noticed at `read_ns` is handed over (now marked so);
        whether it was before (then it is not counted again)."""
        with self._lock:
            entry = self._early.get(path)
            if entry is None or entry[0][0] != read_ns:
                return False
            read, took, handed = entry
            self._early[path] = (read, took, True)
            return handed

    def stop_forwarding(self) -> None:
        with self._lock:
            self._wake = None

    def _forwarded(self, data: bytes, early: dict[str, PackedRead]) -> None:
        with self._lock:
            if self._wake is None:
                return  # the watch stopped taking them (it closed): nothing waits for them
            took = self._takes + 1  # the take that hands over `data`
            for path, read in early.items():
                self._early.pop(path, None)  # to the end: the dict stays in age order
                self._early[path] = (read, took, False)
            # Let go after a while: a later notice of the same end comes within ms.
            keep_from = time.monotonic_ns() - EARLY_KEEP_NS
            while self._early:
                oldest_ns = next(iter(self._early.values()))[0][1]
                if oldest_ns > keep_from:
                    break
                del self._early[next(iter(self._early))]
            if data:
                self._chunks.append(data)
                self._wake()

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

    def _results(self, frames: Frames) -> None:
        fd = self._stdout.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                for _, body in frames.feed(data):
                    frame = decode_frame(body)
                    if frame[0] == ANSWER:
                        self._answer(decode_result(frame))
                    elif frame[0] == FORWARD:
                        chunk, early = frame[1], frame[2]
                        assert isinstance(chunk, bytes) and isinstance(early, dict)
                        self._forwarded(chunk, early)
        except Exception:
            log.exception("final-read process results failed")
        finally:
            self._ended()

    def _answer(self, result: Result) -> None:
        job_id, read_ns, finished_ns, sample, error = result
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if sample is None:  # a bug in the process's read: the agent's reader tries it
            log.error("final read of %s failed in the final-read process: %s", job.path, error)
            self.fallback.submit(job.path, job.notified_ns, job.deliver)
            return
        if read_ns:  # the process had read this end at its notice, before the request came
            if not self._hand_over(job.path, read_ns):
                self._count_early(read_ns, finished_ns)
        else:
            self.answered += 1
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
            if self._wake is not None:  # the watch reads its fd itself again
                self._wake()
        if self._closing:
            return
        rc = self._proc.poll()
        log.error("final-read process %d ended (exit status %s): final reads are done in the "
                  "agent from now on", self._proc.pid, rc)
        for job in jobs:
            self.fallback.submit(job.path, job.notified_ns, job.deliver)
