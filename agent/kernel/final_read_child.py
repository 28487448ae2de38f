"""The final-read process: `python -m agent.kernel.final_read_child`, started by the agent.

It reads cgroups' final samples and nothing else, with a GIL of its own and at real-time
priority (SCHED_FIFO 1, where allowed): in the agent, a final read waited for the GIL after
each syscall behind the collection, the event loop and the watch, and for a CPU behind the
workloads (p99 19 ms against 3.9 ms here, in the same 60 s soak). Reads are by path with no fd
kept between them: nothing here pins a removed cgroup (the agent owns every kept fd), and each
cgroup is forgotten once read. It exits when the agent closes its stdin.

Where the agent hands it the kernel watch's inotify fd, it is the one that reads it: a
`cgroup.events` notice that reads `populated 0` is read at once, here, and every read of the
fd then goes to the agent as it came, with the final reads it started. The agent's watch
thread, at normal priority and sharing its GIL, spent p99 ~6 ms from a notice to asking for
the read at 1,000 cgroups; this process needs none of its bookkeeping to start the read.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from agent.kernel.final_read_notices import Forwarding
from agent.kernel.final_read_wire import (
    CONTROL,
    RESET_DIRS,
    RESET_DONE,
    RESULT,
    START_FORWARDING,
    decode_setup,
    encode_ready,
    encode_result,
    job_frames,
)
from collectors.cgroupfs import CgroupReader

_STDIN, _STDOUT = 0, 1


def _read_exactly(n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        chunk = os.read(_STDIN, n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(_STDOUT, view):]


def serve(reader: CgroupReader, forwarding: Forwarding | None) -> None:
    frames = job_frames()
    poll = select.epoll()
    poll.register(_STDIN, select.EPOLLIN)
    while True:
        # While a cgroup is young its cgroup.events is polled (Forwarding.poll_young).
        ready = {fd for fd, _ in poll.poll(forwarding.poll_s() if forwarding else -1)}
        if _STDIN in ready:
            data = os.read(_STDIN, 65536)
            if not data:
                return  # the agent closed the pipe: it stops, or it died
            for (job_id, number, _n), name in frames.feed(data):
                path = name.decode(errors="surrogateescape")
                if job_id == CONTROL:
                    if forwarding is None:
                        continue
                    if number == START_FORWARDING:
                        poll.register(forwarding.fd, select.EPOLLIN)
                    elif number == RESET_DIRS:
                        forwarding.begin_reset()
                    elif number == RESET_DONE:
                        forwarding.end_reset()
                    else:
                        forwarding.tell(number, path)
                    continue
                done = forwarding.done_read(path) if forwarding is not None else None
                if done is not None:  # this end was read here already (see done_read)
                    _write_all(encode_result(job_id, done[1], done[2], None, done[0]))
                    continue
                try:
                    sample, error = reader.read(path, member_pid=None), None
                except Exception as e:  # told to the agent, which logs it
                    sample, error = None, f"{type(e).__name__}: {e}"
                finished_ns = time.monotonic_ns()
                reader.release(path)  # its last read: nothing about it is kept
                _write_all(encode_result(job_id, finished_ns, sample, error))
        # After the agent's frames: a notice on a directory it just told about finds its path.
        if forwarding is not None:
            if forwarding.fd in ready:
                forwarding.forward()
            forwarding.poll_young()


def main() -> int:
    # The agent ends this process by closing its stdin, after its last read: a stop signal
    # to the whole service (systemd's control-group kill, Ctrl-C) must not end it first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    head = _read_exactly(RESULT.size)
    if head is None:
        return 0
    body = _read_exactly(RESULT.unpack(head)[0])
    if body is None:
        return 0
    layout, realtime, inotify_fd = decode_setup(body)
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError as e:  # not root, RestrictRealtime=yes, RT group scheduling
            print(f"final-read process: SCHED_FIFO refused ({e.strerror}): normal priority",
                  file=sys.stderr, flush=True)
    reader = CgroupReader(layout, max_open_dirs=0)
    forwarding = None
    if inotify_fd is not None and layout.unified is not None:
        forwarding = Forwarding(reader, layout.unified, inotify_fd, _write_all)
    try:
        _write_all(encode_ready())
        serve(reader, forwarding)
    except BrokenPipeError:
        return 0  # the agent is gone
    finally:
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
