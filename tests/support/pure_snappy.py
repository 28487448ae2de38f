"""Snappy's raw block format in pure Python: the compressor the agent used before cramjam.

Kept for tests (its output must decode with cramjam, and the reverse) and for
tests/bench/bench_remote_write.py's before/after figure; the agent uses cramjam.
"""

from __future__ import annotations

from agent.exporters.remote_write_codec import varint

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
