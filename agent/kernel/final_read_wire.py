"""What the agent and its final-read process say to each other over two pipes.

Agent -> process: the layout and priority once (JSON), then one frame per read: job id, the
notice's monotonic_ns, the cgroup's path. A frame fits in PIPE_BUF, so a write to the
non-blocking pipe is whole or refused (EAGAIN), never torn.
Process -> agent: one frame per read: job id, monotonic_ns when the read finished, the sample
(pickled) or the error that stopped it. Both run the same code from the same install.
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

Result = tuple[int, int, CgroupSample | None, str | None]


def mapping_proxy(d: dict[str, object]) -> Mapping[str, object]:
    """Rebuilds a sample's read-only mapping (pickle cannot name mappingproxy itself)."""
    return MappingProxyType(d)


def _reduce_proxy(
    m: MappingProxyType[str, object],
) -> tuple[Callable[[dict[str, object]], Mapping[str, object]], tuple[dict[str, object]]]:
    return mapping_proxy, (dict(m),)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[MappingProxyType] = _reduce_proxy


def encode_setup(layout: CgroupLayout, realtime: bool) -> bytes:
    """The first message: where the hierarchies are, and whether to run at SCHED_FIFO."""
    body = json.dumps({
        "kind": layout.kind.value,
        "unified": None if layout.unified is None else str(layout.unified),
        "v1": {ctrl: str(p) for ctrl, p in layout.v1.items()},
        "realtime": realtime,
    }).encode()
    return RESULT.pack(len(body)) + body


def decode_setup(body: bytes) -> tuple[CgroupLayout, bool]:
    raw = json.loads(body)
    layout = CgroupLayout(
        LayoutKind(raw["kind"]),
        None if raw["unified"] is None else Path(raw["unified"]),
        MappingProxyType({ctrl: Path(p) for ctrl, p in raw["v1"].items()}),
    )
    return layout, bool(raw["realtime"])


def encode_job(job_id: int, notified_ns: int, path: str) -> bytes | None:
    """The job's frame; None when the path is too long for one whole write."""
    name = path.encode(errors="surrogateescape")
    if len(name) > MAX_PATH:
        return None
    return JOB.pack(job_id, notified_ns, len(name)) + name


def encode_result(job_id: int, finished_ns: int, sample: CgroupSample | None,
                  error: str | None) -> bytes:
    out = io.BytesIO()
    out.write(b"\0" * RESULT.size)
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump((job_id, finished_ns, sample, error))
    data = out.getbuffer()
    RESULT.pack_into(data, 0, len(data) - RESULT.size)
    return bytes(data)


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


def decode_result(body: bytes) -> Result:
    job_id, finished_ns, sample, error = pickle.loads(body)
    return int(job_id), int(finished_ns), sample, error
