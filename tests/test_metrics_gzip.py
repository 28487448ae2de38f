"""/metrics for scrapers that accept gzip: the snapshot's part compressed once, each scrape's live
part appended, one ordinary gzip stream that decodes to the plain body byte for byte."""

from __future__ import annotations

import time
import zlib
from dataclasses import replace

import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from agent.api.read import SEND_BATCH, _batches
from agent.exporters.exposition import RENDER_AHEAD_WINDOW_S, MetricsRenderer
from agent.exporters.gzip_body import GzipPrefix, accepts_gzip
from agent.model.snapshot import Snapshot
from tests.test_metrics_render import _snapshot


def _one_member(body: bytes) -> bytes:
    """Decode as a reader that knows one gzip member only (zlib's): all of it, nothing left."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(body) + d.flush()
    assert d.eof and d.unused_data == b""
    return out


class _LiveCounter:
    """A live family whose value changes at every scrape (as the events component's do)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[Metric]:
        self.calls += 1
        fam = CounterMetricFamily("container_agent_test_scrapes", "scrapes seen")
        fam.add_metric([], self.calls)
        return [fam]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_body_decodes_to_the_plain_body_with_each_scrapes_live_part(
        openmetrics: bool) -> None:
    snap = _snapshot(["a", "b", "c"])
    renderer = MetricsRenderer(cadvisor=True)
    live = _LiveCounter()
    renderer.live_families = live
    renderer.prepare(snap)
    for _ in range(3):
        zipped = b"".join(renderer.scrape(snap, openmetrics, gzip=True))
        plain = b"".join(renderer.scrape(snap, openmetrics))
        count = live.calls  # the plain scrape's live value is one above the gzip scrape's
        assert f"container_agent_test_scrapes_total {count}.0".encode() in plain
        expected = plain.replace(f"_total {count}.0".encode(), f"_total {count - 1}.0".encode())
        assert _one_member(zipped) == expected
        assert len(zipped) * 4 < len(plain)
    assert renderer.renders == 1 and renderer.compressions == 1  # once per snapshot
    assert renderer.stale_answers == 0


def _body(renderer: MetricsRenderer, snap: Snapshot, openmetrics: bool = False) -> bytes:
    return _one_member(b"".join(renderer.scrape(snap, openmetrics, gzip=True)))


def test_a_gzip_scrape_never_waits_for_the_snapshot_being_compressed_ahead() -> None:
    renderer = MetricsRenderer(cadvisor=False)
    first = _snapshot(["a", "c"])
    assert b'name="c"' in _body(renderer, first)
    nxt = replace(_snapshot(["a", "d"]), seq=2)
    renderer.prepare(nxt)
    # Published, not yet compressed ahead: the last cycle's body, without a wait.
    assert b'name="c"' in _body(renderer, nxt)
    assert renderer.stale_answers == 1 and renderer.compressions == 1
    assert renderer.render_ahead(nxt)
    assert b'name="d"' in _body(renderer, nxt) and renderer.compressions == 2
    # Never more than one cycle old: a snapshot two on is compressed for the scrape.
    skipped = replace(_snapshot(["a", "e"]), seq=4)
    renderer.prepare(skipped)
    assert b'name="e"' in _body(renderer, skipped)
    assert renderer.stale_answers == 1 and renderer.compressions == 3
    # Nor when no gzip scrape came within the window (nothing compresses ahead then).
    renderer._zip_scraped_ns[False] -= int(RENDER_AHEAD_WINDOW_S * 1e9) + 1
    late = replace(_snapshot(["a", "f"]), seq=5)
    renderer.prepare(late)
    assert renderer.kept_bodies == 0  # that scraper is gone: its body is not kept either
    assert b'name="f"' in _body(renderer, late)
    assert renderer.stale_answers == 1 and renderer.compressions == 4
    # Plain scrapes always get the newest.
    newest = replace(_snapshot(["a", "g"]), seq=6)
    renderer.prepare(newest)
    assert b'name="g"' in b"".join(renderer.scrape(newest, False))


@pytest.mark.parametrize("gzip", [True, False])
def test_a_scrape_of_a_snapshot_already_replaced_gets_the_newer_rendering(gzip: bool) -> None:
    """A scrape takes the published snapshot, then waits for a worker thread; a cycle can
    publish and render ahead in between. The older one is not rendered (and compressed) again:
    100-170 ms a scrape at 1,000 workloads, seen in a soak."""
    renderer = MetricsRenderer(cadvisor=False)
    old = _snapshot(["a", "c"])
    assert b'name="c"' in _body(renderer, old)
    new = replace(_snapshot(["a", "d"]), seq=2)
    renderer.prepare(new)
    assert renderer.render_ahead(new)
    renders, compressions = renderer.renders, renderer.compressions
    body = (_body(renderer, old) if gzip
            else b"".join(renderer.scrape(old, False)))
    assert b'name="d"' in body and b'name="c"' not in body
    assert (renderer.renders, renderer.compressions) == (renders, compressions)


def test_render_ahead_compresses_only_the_formats_scraped_with_gzip() -> None:
    renderer = MetricsRenderer(cadvisor=False)
    first = _snapshot(["a"])
    renderer.scrape(first, False)  # a plain text scraper
    scraped = renderer.scraped_ns
    assert scraped is not None
    nxt = replace(_snapshot(["a", "b"]), seq=2)
    renderer.prepare(nxt)
    assert renderer.render_ahead(nxt, scraped + 10**9)
    assert renderer.compressions == 0
    renderer.scrape(nxt, True, gzip=True)  # an OpenMetrics gzip scraper appears
    assert renderer.compressions == 1
    late = replace(_snapshot(["a", "b", "c"]), seq=3)
    renderer.prepare(late)
    assert renderer.render_ahead(late, renderer.scraped_ns + 10**9)
    assert renderer.compressions == 2  # compressed ahead, for that format only
    renderer.scrape(late, True, gzip=True)
    assert renderer.compressions == 2
    zip_ns = renderer.scraped_ns
    window = int(RENDER_AHEAD_WINDOW_S * 1e9)
    renderer.scraped_ns = zip_ns + window  # a plain scraper goes on; the gzip one went away
    gone = replace(_snapshot(["a"]), seq=4)
    renderer.prepare(gone)
    assert renderer.render_ahead(gone, zip_ns + window + 1)
    assert renderer.renders == 4 and renderer.compressions == 2


def test_a_scrapes_end_does_not_encode_the_snapshots_part_again() -> None:
    """The head is flushed to a byte boundary: a scrape's end holds its own bytes and the
    trailer, not the snapshot part's last block once more (0.39 against 0.04 ms a scrape)."""
    text = b"".join(f'm{{id="/c{i}"}} {i * 7919 % 104729}\n'.encode() for i in range(50_000))
    prefix = GzipPrefix([text[i:i + 65536] for i in range(0, len(text), 65536)])
    end = prefix.finish(b"")
    assert len(end) < 32, len(end)
    assert _one_member(prefix.head + end) == text


def test_a_prefix_ends_any_number_of_times_and_each_end_is_a_whole_stream() -> None:
    head = [b"x" * 70_000, b"", b"line 1\n" * 1000]
    prefix = GzipPrefix(head)
    for tail in (b"", b"tail\n", bytes(range(256)) * 300):
        assert _one_member(prefix.head + prefix.finish(tail)) == b"".join(head) + tail


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("deflate, GZIP;q=0.5", True),
    ("x-gzip", True),
    ("*", True),
    ("", False),
    ("identity", False),
    ("br, deflate", False),
    ("gzip;q=0", False),
    ("gzip; q=0.0, *", False),
    ("*;q=0", False),
    ("gzip;q=bad", False),
])
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize("gzip", [True, False])
def test_a_scrape_is_ready_on_the_loop_only_when_nothing_needs_rendering(gzip: bool) -> None:
    """scrape_ready (the event loop's try) answers exactly as scrape() does once the snapshot
    is rendered ahead, renders nothing itself, and never waits for a rendering under way."""
    renderer = MetricsRenderer(cadvisor=False)
    live = _LiveCounter()
    renderer.live_families = live
    snap = _snapshot(["a", "c"])
    assert renderer.scrape_ready(snap, False, gzip) is None  # nothing rendered: a worker's job
    assert renderer.renders == 0 and renderer.scraped_ns is None
    renderer.scrape(snap, False, gzip)  # a first scrape renders (and marks a scraper)
    nxt = replace(_snapshot(["a", "d"]), seq=2)
    renderer.prepare(nxt)
    assert renderer.render_ahead(nxt)
    renders, compressions = renderer.renders, renderer.compressions
    ready = renderer.scrape_ready(nxt, False, gzip)
    assert ready is not None
    body = _one_member(b"".join(ready)) if gzip else b"".join(ready)
    assert b'name="d"' in body and f"_total {live.calls}.0".encode() in body
    assert (renderer.renders, renderer.compressions) == (renders, compressions)
    later = replace(_snapshot(["a", "e"]), seq=3)
    renderer.prepare(later)
    with renderer._lock:  # render_ahead at work on `later`
        ready = renderer.scrape_ready(later, False, gzip)
    if gzip:  # the last cycle's compressed body, as scrape() gives while it compresses
        assert ready is not None and b'name="d"' in _one_member(b"".join(ready))
        assert renderer.stale_answers == 1
    else:
        assert ready is None


def test_a_plain_body_goes_out_in_few_sends_and_whole() -> None:
    """The plain body's ~100 parts (4 MB at 1,000 workloads) are sent in batches of about
    SEND_BATCH bytes: all of them, in order, none split."""
    parts = [bytes([65 + i % 26]) * (1000 + 997 * i % 70_000) for i in range(100)]
    batches = list(_batches(parts))
    assert b"".join(batches) == b"".join(parts)
    assert all(len(b) >= SEND_BATCH for b in batches[:-1])
    assert len(batches) <= sum(map(len, parts)) // SEND_BATCH + 1
    assert list(_batches([])) == []


@pytest.mark.parametrize("gzip", [True, False])
def test_scrapes_of_a_snapshot_rendered_ahead_render_nothing_on_the_loop(gzip: bool) -> None:
    """render_ahead renders the live families with the snapshot, for the formats scraped:
    scrapes of it then get the live part as the cycle left it (a gzip one, its whole stream
    compressed ahead) and render nothing; a snapshot not rendered ahead gets a live part
    rendered by its scrape; a format nobody scrapes any more is not rendered ahead."""
    renderer = MetricsRenderer(cadvisor=False)
    live = _LiveCounter()
    renderer.live_families = live
    first = _snapshot(["a", "c"])
    renderer.scrape(first, True, gzip)  # an OpenMetrics scraper
    nxt = replace(_snapshot(["a", "d"]), seq=2)
    renderer.prepare(nxt)
    assert renderer.render_ahead(nxt)
    calls = live.calls
    answers = [renderer.scrape_ready(nxt, True, gzip) for _ in range(3)]
    assert live.calls == calls  # nothing rendered by the scrapes
    for ready in answers:
        assert ready is not None
        body = _one_member(b"".join(ready)) if gzip else b"".join(ready)
        assert f"container_agent_test_scrapes_total {calls}.0".encode() in body
        assert b'name="d"' in body and body.endswith(b"# EOF\n")
    if gzip:  # the same two byte strings each time: nothing compressed per scrape either
        assert all(a[1] is answers[0][1] for a in answers if a is not None)
    # The text format was never asked for: its live part is the scrape's own.
    plain = b"".join(renderer.scrape(nxt, False, gzip))
    assert live.calls == calls + 1
    if gzip:  # published, still being compressed: the last cycle's body with its own end
        compressing = replace(_snapshot(["a", "x"]), seq=3)
        renderer.prepare(compressing)
        stale = renderer.scrape_ready(compressing, True, gzip)
        assert stale is not None and stale[1] is answers[0][1] and live.calls == calls + 1
    # A snapshot that was not rendered ahead (no render_ahead call): the scrape renders it.
    later = replace(_snapshot(["a", "e"]), seq=4)
    renderer.prepare(later)
    body = b"".join(renderer.scrape(later, True, gzip))
    assert live.calls == calls + 2
    assert f"_total {calls + 2}.0".encode() in (_one_member(body) if gzip else body)
    assert b"container_agent_test_scrapes_total" in (_one_member(plain) if gzip else plain)
    # Nobody scrapes OpenMetrics within the window any more: not rendered ahead for it.
    window = int(RENDER_AHEAD_WINDOW_S * 1e9)
    renderer._format_scraped_ns[True] -= window + 1
    renderer._format_scraped_ns[False] -= window + 1
    renderer.scraped_ns = time.monotonic_ns()
    last = replace(_snapshot(["a", "f"]), seq=5)
    renderer.prepare(last)
    renderer.render_ahead(last)
    assert live.calls == calls + 2 and renderer._live_ahead == {}
