"""Prometheus remote-write 1.0 wire format by hand: protobuf WriteRequest and snappy blocks.

Only the four messages the protocol needs are encoded (prometheus/prompb/types.proto):
  WriteRequest{repeated TimeSeries timeseries = 1}
  TimeSeries{repeated Label labels = 1; repeated Sample samples = 2}
  Label{string name = 1; string value = 2}
  Sample{double value = 1; int64 timestamp = 2}   (timestamp in ms)
Snappy is the raw block format (not the framing format), as remote write requires.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

_DOUBLE = struct.Struct("<d")


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take ten bytes (two's complement)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    # Receivers reject invalid UTF-8; a stray surrogate becomes U+FFFD rather than losing a batch.
    return value.encode("utf-8", "replace")


def encode_label(name: str, value: str) -> bytes:
    return _len_field(0x0A, _text(name)) + _len_field(0x12, _text(value))


def encode_sample(value: float, timestamp_ms: int) -> bytes:
    return b"\x09" + _DOUBLE.pack(value) + b"\x10" + varint(timestamp_ms)


def encode_timeseries(labels: Mapping[str, str], samples: Iterable[tuple[float, int]]) -> bytes:
    """One TimeSeries; labels are written sorted by name, as receivers expect."""
    parts = [_len_field(0x0A, encode_label(k, labels[k])) for k in sorted(labels)]
    parts.extend(_len_field(0x12, encode_sample(v, t)) for v, t in samples)
    return b"".join(parts)


class SeriesEncoder:
    """Encodes one-sample TimeSeries, caching encoded labels: a workload's id, name, cgroup...
    repeat on each of its dozens of series, so most label fields are encoded once."""

    def __init__(self, max_cached: int = 500_000) -> None:
        self._labels: dict[tuple[str, str], bytes] = {}
        self._max = max_cached

    def labels(self, labels: Mapping[str, str]) -> bytes:
        """The repeated Label fields of a TimeSeries, sorted by name."""
        cache = self._labels
        parts = []
        for name in sorted(labels):
            key = (name, labels[name])
            field = cache.get(key)
            if field is None:
                if len(cache) >= self._max:
                    cache.clear()
                field = cache[key] = _len_field(0x0A, encode_label(*key))
            parts.append(field)
        return b"".join(parts)

    @staticmethod
    def series(encoded_labels: bytes, value: float, timestamp_ms: int) -> bytes:
        return encoded_labels + _len_field(0x12, encode_sample(value, timestamp_ms))


def encode_write_request(series: Sequence[bytes]) -> bytes:
    """A WriteRequest from already encoded TimeSeries messages."""
    return b"".join(_len_field(0x0A, ts) for ts in series)


# --- snappy block format --------------------------------------------------------------------

_BLOCK = 1 << 16  # offsets stay below 64 KiB, so every copy fits the 2-byte-offset form
_MIN_MATCH = 4


def _literal(out: bytearray, data: bytes | memoryview, start: int, end: int) -> None:
    n = end - start - 1
    if n < 60:
        out.append(n << 2)
    elif n < 0x100:
        out += bytes((60 << 2, n))
    elif n < 0x10000:
        out += bytes((61 << 2, n & 0xFF, n >> 8))
    else:
        out += bytes((62 << 2, n & 0xFF, (n >> 8) & 0xFF, n >> 16))
    out += data[start:end]


def _copy(out: bytearray, offset: int, length: int) -> None:
    lo, hi = offset & 0xFF, offset >> 8
    if length > 64:
        # Whole 64-byte copies share one encoding: emit them in one go. Keep 4+ bytes for the
        # tail so it can still use the short form.
        k, rest = divmod(length, 64)
        if 0 < rest < _MIN_MATCH:
            k, rest = k - 1, rest + 64
        out += bytes((0x02 | (63 << 2), lo, hi)) * k
        if rest > 64:
            out += bytes((0x02 | (59 << 2), lo, hi))
            rest -= 60
        length = rest
    if length == 0:
        return
    if 4 <= length <= 11 and offset < 2048:
        out += bytes((0x01 | ((length - 4) << 2) | (hi << 5), lo))
    else:
        out += bytes((0x02 | ((length - 1) << 2), lo, hi))


def _match_length(data: bytes, a: int, b: int, end: int) -> int:
    """Length of the common run of data[a:] and data[b:], b > a, not past end.

    XOR of two chunks read as big integers finds the first differing byte in C, so a long
    match costs a few operations instead of one per byte.
    """
    n = _MIN_MATCH
    step = 32
    while b + n < end:
        k = min(step, end - b - n)
        x = int.from_bytes(data[a + n : a + n + k], "big") ^ int.from_bytes(
            data[b + n : b + n + k], "big"
        )
        if x:
            return n + k - 1 - (x.bit_length() - 1) // 8
        n += k
        step <<= 2
    return n


def snappy_compress(data: bytes) -> bytes:
    """Greedy LZ77 with a 4-byte hash, per 64 KiB block: valid for any snappy decoder."""
    out = bytearray(varint(len(data)))
    total = len(data)
    for base in range(0, total, _BLOCK):
        end = min(base + _BLOCK, total)
        table: dict[bytes, int] = {}
        lit = pos = base
        misses = 32  # snappy's skip heuristic: step faster through incompressible input
        while pos + _MIN_MATCH <= end:
            key = data[pos : pos + _MIN_MATCH]
            cand = table.get(key)
            table[key] = pos
            if cand is None:
                pos += misses >> 5
                misses += 1
                continue
            misses = 32
            length = _match_length(data, cand, pos, end)
            if lit < pos:
                _literal(out, data, lit, pos)
            _copy(out, pos - cand, length)
            pos += length
            lit = pos
            if pos - 1 >= base and pos + 3 <= end:
                table[data[pos - 1 : pos + 3]] = pos - 1
        if lit < end:
            _literal(out, data, lit, end)
    return bytes(out)


def snappy_decompress(data: bytes) -> bytes:
    """Reference decoder (tests and debugging); raises ValueError on corrupt input."""
    length = shift = i = 0
    while True:
        if i >= len(data):
            raise ValueError("snappy: truncated length")
        b = data[i]
        i += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    out = bytearray()
    while i < len(data):
        tag = data[i]
        i += 1
        kind = tag & 3
        if kind == 0:
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(data[i : i + extra], "little")
                i += extra
            n += 1
            if i + n > len(data):
                raise ValueError("snappy: literal past end")
            out += data[i : i + n]
            i += n
            continue
        if kind == 1:
            n = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | data[i]
            i += 1
        elif kind == 2:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[i : i + 2], "little")
            i += 2
        else:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[i : i + 4], "little")
            i += 4
        if offset == 0 or offset > len(out):
            raise ValueError("snappy: bad copy offset")
        for _ in range(n):
            out.append(out[-offset])
    if len(out) != length:
        raise ValueError("snappy: length mismatch")
    return bytes(out)
