"""A /metrics body compressed once per snapshot for the scrapers that accept gzip (Prometheus
sends `Accept-Encoding: gzip` on every scrape).

The snapshot's part (~4 MB of text at 1,000 workloads, ~170 kB compressed) is compressed once;
each scrape only compresses its small live part onto a copy of the compressor and ends the
stream. The client gets one ordinary gzip stream (one member: no reader needs multi-member
support), the agent writes ~24x fewer bytes per scrape and joins no body-sized buffer.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

#: zlib's fastest level: 4 MB of exposition text in ~9 ms here; level 6 takes 2.6x as long for a
#: body 10 % smaller.
LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header value allows gzip (RFC 9110: `gzip` or `*`, an
    explicit `gzip` taking precedence; a q-value of 0 refuses)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.split(","):
        token, _, params = item.partition(";")
        coding = token.strip().lower()
        coding = "gzip" if coding == "x-gzip" else coding
        if coding not in ("gzip", "*"):
            continue
        q = params.strip().lower().replace(" ", "")
        try:
            allowed[coding] = float(q[2:]) > 0 if q.startswith("q=") else True
        except ValueError:
            allowed[coding] = False
    return allowed.get("gzip", allowed.get("*", False))


class GzipPrefix:
    """The start of one gzip stream (the snapshot's parts, compressed once) and its ends."""

    def __init__(self, parts: Iterable[bytes], level: int = LEVEL) -> None:
        comp = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        # Flushed to a byte boundary (5 bytes): the compressor holds no pending block, which
        # each scrape's copy would otherwise encode again (0.39 against 0.04 ms a scrape for
        # 4 MB of text here).
        self.head = b"".join([comp.compress(p) for p in parts if p]) + comp.flush(
            zlib.Z_SYNC_FLUSH)
        self._comp = comp

    def finish(self, tail: bytes) -> bytes:
        """The rest of the stream for one scrape: `tail` compressed, and the gzip trailer
        (CRC and length of everything, head included). Thread-safe: each call ends a copy."""
        comp = self._comp.copy()
        return comp.compress(tail) + comp.flush(zlib.Z_FINISH)
