"""Final reads in a process of their own (agent.kernel.final_read_process): real cgroups, the
real child process, and nothing lost when it cannot be used (a full pipe, a death)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from agent.kernel.final_read import FinalReadThread
from agent.kernel.final_read_process import FinalReadProcess
from agent.kernel.final_read_wire import (
    MAX_PATH,
    decode_frame,
    decode_result,
    encode_job,
    encode_result,
    job_frames,
    result_frames,
)
from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory


class Delivered:
    """What `deliver` got, by path; thread-safe (the results thread and the fallback call it)."""

    def __init__(self) -> None:
        self.samples: list[CgroupSample] = []
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)

    def __call__(self, sample: CgroupSample) -> None:
        with self.lock:
            self.samples.append(sample)
            self.done.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> list[CgroupSample]:
        with self.lock:
            self.done.wait_for(lambda: len(self.samples) >= n, timeout)
            return list(self.samples)


def _start(cgroups: CgroupFactory, realtime: bool = True) -> FinalReadProcess:
    return FinalReadProcess(cgroups.layout, FinalReadThread(CgroupReader(cgroups.layout)),
                            realtime)


def test_the_process_reads_the_kernel_s_last_counters(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("ran")
    cg.burn(0.2).wait()
    reads = _start(cgroups)
    try:
        got = Delivered()
        notified = time.monotonic_ns()
        reads.submit(cg.rel, notified, got)
        [sample] = got.wait(1)
        policy = os.sched_getscheduler(reads.pid)  # set by the child before its first read
        assert sample.cpu is not None and sample.cpu.usage_usec == cg.cpu_usage_usec() > 0
        assert sample.populated is False and not sample.vanished
        assert sample.memory is not None and sample.pids is not None
        # The same hierarchies as a read in the agent finds (no member pid to go by here).
        here = CgroupReader(cgroups.layout).read(cg.rel)
        assert dict(sample.v1_paths) == dict(here.v1_paths)
        assert here.memory is not None and sample.memory.peak == here.memory.peak
        # Timed from the notice to the read's end in the child, on the one monotonic clock.
        _, count, total = reads.latency.totals()
        assert count == 1 and 0 < total < (time.monotonic_ns() - notified) / 1e9
        assert reads.handed_back == 0 and reads.alive()
    finally:
        reads.close()
    assert policy == os.SCHED_FIFO  # root: real-time priority, as asked


def test_without_realtime_the_process_keeps_the_normal_policy(
        cgroups: CgroupFactory) -> None:
    reads = _start(cgroups, realtime=False)
    got = Delivered()
    try:
        reads.submit("/absent", time.monotonic_ns(), got)
        got.wait(1)
        assert os.sched_getscheduler(reads.pid) == os.SCHED_OTHER
    finally:
        reads.close()


def test_a_full_pipe_hands_the_jobs_to_the_thread_and_none_is_lost(
        cgroups: CgroupFactory) -> None:
    cg = cgroups.create("many")
    reads = _start(cgroups)
    got = Delivered()
    os.kill(reads.pid, signal.SIGSTOP)  # our own child: its stdin fills
    try:
        # Long (absent) paths: 64 KiB of pipe is ~16 jobs. Each is read somewhere, once.
        paths = [f"{cg.rel}/{'x' * 3900}{i}" for i in range(40)]
        for path in paths:
            reads.submit(path, time.monotonic_ns(), got)
        assert reads.handed_back > 0
    finally:
        os.kill(reads.pid, signal.SIGCONT)
    try:
        samples = got.wait(len(paths))
        assert Counter(s.path for s in samples) == Counter(paths)
        assert all(s.vanished for s in samples)
    finally:
        reads.close()


def test_a_path_too_long_for_one_write_is_read_in_the_agent(cgroups: CgroupFactory) -> None:
    reads = _start(cgroups)
    got = Delivered()
    try:
        path = "/" + "y" * MAX_PATH
        reads.submit(path, time.monotonic_ns(), got)
        [sample] = got.wait(1)
        assert sample.path == path and reads.handed_back == 1
    finally:
        reads.close()


def test_the_jobs_of_a_process_that_died_are_read_in_the_agent(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("orphaned")
    cg.burn(0.1).wait()
    reads = _start(cgroups)
    got = Delivered()
    try:
        os.kill(reads.pid, signal.SIGSTOP)
        for _ in range(3):  # taken by the pipe, never answered
            reads.submit(cg.rel, time.monotonic_ns(), got)
        assert reads.handed_back == 0
        os.kill(reads.pid, signal.SIGKILL)
        samples = got.wait(3)
        assert len(samples) == 3
        assert all(s.cpu is not None and s.cpu.usage_usec == cg.cpu_usage_usec()
                   for s in samples)
        deadline = time.monotonic() + 5
        while reads.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not reads.alive()  # the events component shows it down
        reads.submit(cg.rel, time.monotonic_ns(), got)  # later ones: the thread
        assert len(got.wait(4)) == 4
    finally:
        reads.close()


def test_a_read_that_fails_in_the_process_is_tried_in_the_agent_and_the_process_goes_on(
        cgroups: CgroupFactory, caplog: pytest.LogCaptureFixture) -> None:
    cg = cgroups.create("after-a-bad-one")
    reads = _start(cgroups)
    got = Delivered()
    tried: list[str] = []
    reads.fallback.submit = lambda path, *_: tried.append(path)  # type: ignore[method-assign]
    try:
        reads.submit("/bad\0path", time.monotonic_ns(), got)  # the reader raises ValueError
        reads.submit(cg.rel, time.monotonic_ns(), got)
        [sample] = got.wait(1)
        assert sample.path == cg.rel and reads.alive() and reads.handed_back == 0
        assert tried == ["/bad\0path"]
        assert "ValueError" in caplog.text
    finally:
        reads.close()


def test_close_ends_the_process(cgroups: CgroupFactory) -> None:
    reads = _start(cgroups)
    pid = reads.pid
    reads.close()
    assert not os.path.exists(f"/proc/{pid}")  # exited and reaped
    assert not reads.alive()
    reads.submit("/late", time.monotonic_ns(), Delivered())  # a notice racing the stop
    assert reads.handed_back == 0  # dropped, not queued to a closed thread


# -- the wire -------------------------------------------------------------------------------
def test_frames_survive_any_split() -> None:
    frames = [encode_job(i, 1_000 + i, f"/a/b{i}\n c") for i in range(1, 4)]
    stream = b"".join(f for f in frames if f is not None)
    for cut in range(1, len(stream)):
        parser = job_frames()
        out = list(parser.feed(stream[:cut])) + list(parser.feed(stream[cut:]))
        assert [(f[0], f[1], body.decode()) for f, body in out] == \
            [(i, 1_000 + i, f"/a/b{i}\n c") for i in range(1, 4)]


def test_a_real_sample_crosses_the_pipe_unchanged(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("wire")
    cg.burn(0.05).wait()
    sample = CgroupReader(cgroups.layout).read(cg.rel)
    frame = encode_result(7, 123, sample, None)
    [(_, body)] = list(result_frames().feed(frame))
    job_id, read_ns, finished, back, error = decode_result(decode_frame(body))
    assert read_ns == 0
    assert (job_id, finished, error) == (7, 123, None)
    assert back == sample and back is not None and back.cpu == sample.cpu
    assert back.memory is not None and sample.memory is not None
    assert dict(back.memory.stat) == dict(sample.memory.stat)


def test_a_path_longer_than_one_pipe_write_is_not_framed() -> None:
    assert encode_job(1, 1, "/" + "z" * (MAX_PATH - 1)) is not None
    assert encode_job(1, 1, "/" + "z" * MAX_PATH) is None


@pytest.fixture(autouse=True)
def _no_stray_children() -> object:
    """Every test here closes the process it started."""
    yield
    assert not [t for t in threading.enumerate() if t.name == "final-read-results"]
