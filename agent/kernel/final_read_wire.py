"""What the agent and its final-read process say to each other over two pipes.

Agent -> process: the layout, priority and the inotify fd to forward (JSON) once, then frames
of job id, a number and a path. A job id above 0 is a read (the number: the notice's
monotonic_ns); job id 0 tells which cgroup a watch descriptor of the forwarded inotify
instance is on (the number: the wd), or, with the number START_FORWARDING, that the map is
complete and the process now reads the inotify fd; RESET_DIRS, the map's wds, RESET_DONE: the
whole map again (after a queue overflow: removals whose notices were lost), and what it no
longer names is forgotten. A frame fits in PIPE_BUF, so a write to the
non-blocking pipe is whole or refused (EAGAIN), never torn.
Process -> agent: length-prefixed pickles: READY once; a read's result (job id, monotonic_ns
when it finished, the sample or the error that stopped it); and, while forwarding, each read of
the inotify fd as it came with the final reads it started (path -> notice and finished
monotonic_ns, sample; each read pickled on its own, see PackedRead). Both run the same code
from the same install.
"""

from __future__ import annotations

import copyreg
import io
import json
import pickle
import select
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from collectors.layout import CgroupLayout, LayoutKind
from collectors.samples import CgroupSample

#: job id, notified monotonic_ns, path length; then the path (UTF-8, surrogateescape).
JOB = struct.Struct("<QqH")
#: payload length; then a pickle of (job id, finished monotonic_ns, sample | None, error).
RESULT = struct.Struct("<I")
#: Longest frame written whole to a pipe (POSIX PIPE_BUF on Linux).
PIPE_BUF = select.PIPE_BUF
MAX_PATH = PIPE_BUF - JOB.size

#: (job id, read_ns, finished monotonic_ns, sample | None, error): `read_ns` is 0 for a read
#: done for the job, else the notice time of the process's own read of that end, done before.
Result = tuple[int, int, int, CgroupSample | None, str | None]
#: A final read the process started itself, at a `populated 0` it took off the inotify fd:
#: (notice monotonic_ns, finished monotonic_ns, sample).
EarlyRead = tuple[int, int, CgroupSample]
#: An EarlyRead as sent and as the agent keeps it until the watch asks for it (seconds, see
#: final_read_process.EARLY_KEEP_NS): (notice ns, finished ns, the sample's inode and CPU
#: usage_usec, which decide whether it is the end asked for, the sample pickled). Kept, 1.6 KB
#: against 8.5 KB as objects (tests/test_final_read_forwarding.py): ~2 MiB at 50 lives a second.
PackedRead = tuple[int, int, int | None, int | None, bytes]
#: Job id of the frames that are not reads (see the module's doc).
CONTROL = 0
#: The number of the control frame that starts the forwarding (never a wd: those are > 0).
START_FORWARDING = -1
#: The numbers of the control frames around a whole map told again (see the module's doc).
RESET_DIRS, RESET_DONE = -2, -3
#: The process -> agent frames' kinds.
READY, ANSWER, FORWARD = "ready", "answer", "forward"


def mapping_proxy(d: dict[str, object]) -> Mapping[str, object]:
    """Rebuilds a sample's read-only mapping (pickle cannot name mappingproxy itself)."""
    return MappingProxyType(d)


def _reduce_proxy(
    m: MappingProxyType[str, object],
) -> tuple[Callable[[dict[str, object]], Mapping[str, object]], tuple[dict[str, object]]]:
    return mapping_proxy, (dict(m),)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[MappingProxyType] = _reduce_proxy


def encode_setup(layout: CgroupLayout, realtime: bool, inotify_fd: int | None = None) -> bytes:
    """The first message: where the hierarchies are, whether to run at SCHED_FIFO, and the
    inotify fd (inherited) it is to read and forward once told to start."""
    body = json.dumps({
        "inotify_fd": inotify_fd,
        "kind": layout.kind.value,
        "unified": None if layout.unified is None else str(layout.unified),
        "v1": {ctrl: str(p) for ctrl, p in layout.v1.items()},
        "realtime": realtime,
    }).encode()
    return RESULT.pack(len(body)) + body


def decode_setup(body: bytes) -> tuple[CgroupLayout, bool, int | None]:
    raw = json.loads(body)
    layout = CgroupLayout(
        LayoutKind(raw["kind"]),
        None if raw["unified"] is None else Path(raw["unified"]),
        MappingProxyType({ctrl: Path(p) for ctrl, p in raw["v1"].items()}),
    )
    fd = raw.get("inotify_fd")
    return layout, bool(raw["realtime"]), None if fd is None else int(fd)


def encode_job(job_id: int, notified_ns: int, path: str) -> bytes | None:
    """The job's frame; None when the path is too long for one whole write."""
    name = path.encode(errors="surrogateescape")
    if len(name) > MAX_PATH:
        return None
    return JOB.pack(job_id, notified_ns, len(name)) + name


def _dump(out: io.BytesIO, obj: object) -> None:
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)


def _encode(frame: tuple[object, ...]) -> bytes:
    out = io.BytesIO()
    out.write(b"\0" * RESULT.size)
    _dump(out, frame)
    data = out.getbuffer()
    RESULT.pack_into(data, 0, len(data) - RESULT.size)
    return bytes(data)


def encode_ready() -> bytes:
    return _encode((READY,))


def encode_result(job_id: int, finished_ns: int, sample: CgroupSample | None,
                  error: str | None, read_ns: int = 0) -> bytes:
    return _encode((ANSWER, job_id, read_ns, finished_ns, sample, error))


def encode_forward(data: bytes, early: Mapping[str, EarlyRead]) -> bytes:
    """A read of the inotify fd, bytes as the kernel gave them, and the reads they started."""
    return _encode((FORWARD, data, {path: pack_read(read) for path, read in early.items()}))


def pack_read(read: EarlyRead) -> PackedRead:
    notified_ns, finished_ns, sample = read
    usage = sample.cpu.usage_usec if sample.cpu is not None else None
    out = io.BytesIO()
    _dump(out, sample)
    return notified_ns, finished_ns, sample.inode, usage, out.getvalue()


def unpack_read(packed: PackedRead) -> EarlyRead:
    sample = pickle.loads(packed[4])
    assert isinstance(sample, CgroupSample)
    return packed[0], packed[1], sample


class Frames:
    """Splits a byte stream into frames: `feed` bytes, iterate the complete ones."""

    def __init__(self, header: struct.Struct, length_at: int) -> None:
        self._header = header
        self._length_at = length_at
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[tuple[int, ...], bytes]]:
        """The frames completed by `data`: (header fields, body)."""
        self._buf += data
        size = self._header.size
        at = 0
        while len(self._buf) - at >= size:
            fields = self._header.unpack_from(self._buf, at)
            end = at + size + int(fields[self._length_at])
            if end > len(self._buf):
                break
            yield fields, bytes(self._buf[at + size:end])
            at = end
        del self._buf[:at]


def job_frames() -> Frames:
    return Frames(JOB, 2)


def result_frames() -> Frames:
    return Frames(RESULT, 0)


def decode_frame(body: bytes) -> tuple[object, ...]:
    """(READY,), (ANSWER, *Result) or (FORWARD, bytes, {path: PackedRead})."""
    frame = pickle.loads(body)
    assert isinstance(frame, tuple) and frame and frame[0] in (READY, ANSWER, FORWARD), frame
    return frame


def decode_result(frame: tuple[object, ...]) -> Result:
    _, job_id, read_ns, finished_ns, sample, error = frame
    assert sample is None or isinstance(sample, CgroupSample)
    assert error is None or isinstance(error, str)
    return (int(job_id), int(read_ns), int(finished_ns),  # type: ignore[call-overload]
            sample, error)
