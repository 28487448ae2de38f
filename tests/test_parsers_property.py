"""Property tests: every parser fed arbitrary bytes returns a result or raises ParseError,
never another exception; well-formed generated input round-trips by key."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import parsers
from collectors.blockdev import parse_uevent_devname
from collectors.parsers import ParseError
from collectors.samples import UNLIMITED

PARSERS: list[Callable[[bytes], Any]] = [
    parsers.parse_flat,
    parsers.parse_single,
    parsers.parse_cpu_max,
    parsers.parse_events,
    parsers.parse_pressure,
    parsers.parse_io_stat,
    parsers.parse_nested,
    parsers.parse_v1_limit,
    parsers.parse_v1_blkio,
    parsers.parse_v1_memory_stat,
    parsers.parse_freezer_state,
    parsers.parse_procs_first,
    parsers.parse_proc_cgroup,
]

# Arbitrary bytes, and bytes built from the tokens the formats use (reaches deeper branches).
TOKENS = [
    b"some",
    b"full",
    b"avg10=",
    b"avg60=",
    b"avg300=",
    b"total=",
    b"max",
    b"total_",
    b"rss",
    b"8:0",
    b"Read",
    b"Total",
    b"=",
    b":",
    b" ",
    b"\n",
    b"1",
    b"0.5",
    b"-1",
    b"rbytes=",
    b"cost.vrate=",
    b"FROZEN",
    b"\xff",
    b"\x00",
    b"9223372036854771712",
]
SHAPED = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
ANY_BYTES = st.one_of(st.binary(max_size=400), SHAPED)


def _check(parser: Callable[[bytes], Any], data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parser(data)


@settings(max_examples=300, deadline=None)
@given(ANY_BYTES)
def test_every_parser_returns_or_raises_parse_error(data: bytes) -> None:
    for parser in PARSERS:
        _check(parser, data)
    parse_uevent_devname(data)  # never raises at all


KEY = st.from_regex(r"\A[a-z][a-z_]{0,15}\Z", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEY, st.integers(min_value=0, max_value=2**63), max_size=30))
def test_flat_round_trip(d: dict[str, int]) -> None:
    text = "".join(f"{k} {v}\n" for k, v in d.items()).encode()
    assert parsers.parse_flat(text) == d


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.just(None), st.integers(min_value=0, max_value=2**62 - 1)))
def test_single_round_trip(v: int | None) -> None:
    text = b"max\n" if v is None else f"{v}\n".encode()
    assert parsers.parse_single(text) == (UNLIMITED if v is None else v)


PSI_NUM = st.decimals(min_value=0, max_value=100, places=2).map(str)


@settings(max_examples=100, deadline=None)
@given(PSI_NUM, PSI_NUM, PSI_NUM, st.integers(min_value=0, max_value=2**63))
def test_pressure_round_trip(a: str, b: str, c: str, total: int) -> None:
    line = f"avg10={a} avg60={b} avg300={c} total={total}\n"
    p = parsers.parse_pressure(f"some {line}full {line}".encode())
    assert p.some is not None and p.full is not None
    assert p.some.avg10 == float(a) and p.full.total == total and p.some.avg300 == float(c)
