"""The store's writer thread through a real agentd: event ids exact across a restart (monotonic,
no gap, no duplicate), an SSE client that reconnects sees every event once, and a large events
query or billing export does not stall the event loop (/healthz keeps answering meanwhile)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import needs_root
from tests.support.agentd import RunningAgent
from tests.support.cgroups import CgroupFactory
from tests.support.churn import Churn

pytestmark = needs_root


class SseClient:
    """Reads /api/v1/events/stream in a thread: (id, type) of every frame, in order."""

    def __init__(self, agent: RunningAgent, last_id: int | None) -> None:
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        req = urllib.request.Request(agent.base_url + "/api/v1/events/stream", headers=headers)
        self.resp = urllib.request.urlopen(req, timeout=60)
        self.got: list[tuple[int, str]] = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        eid = None
        try:
            while line := self.resp.readline():
                text = line.decode().rstrip("\n")
                if text.startswith("id: "):
                    eid = int(text[4:])
                elif text.startswith("data: ") and eid is not None:
                    self.got.append((eid, json.loads(text[6:])["type"]))
        except (OSError, ValueError, AttributeError):
            pass  # closed by close() (http.client drops its file: AttributeError)
        finally:
            self.ended.set()

    def close(self) -> None:
        self.resp.close()
        self.thread.join(10)


def _all_events(agent: RunningAgent) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    since = 0
    while True:
        page = agent.get(f"/api/v1/events?since={since}&limit=10000")["events"]
        out.extend((e["id"], e["type"]) for e in page)
        if len(page) < 10000:
            return out
        since = page[-1]["id"]


def _settled(agent: RunningAgent, sse: SseClient) -> list[tuple[int, str]]:
    """The stored events once the SSE client has seen the last of them."""
    def seen() -> list[tuple[int, str]] | None:
        stored = _all_events(agent)
        return stored if sse.got and sse.got[-1][0] == stored[-1][0] else None
    time.sleep(2)  # the churn's last lives stop
    return list(agent.wait_for(seen, timeout=30, interval=0.2))


def test_event_ids_exact_across_restart_and_sse_sees_each_once(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    first = RunningAgent(tmp_path, {"interval": 1}, [])
    try:
        first.wait_ready(60)
        sse1 = SseClient(first, 0)
        Churn(cgroups, 20, 0.01, workers=4).run(2)
        _settled(first, sse1)
        assert first.stop() == 0
        assert sse1.ended.wait(30)  # the agent closed the stream at stop
        sse1.close()
    finally:
        first.stop()
    last_seen = sse1.got[-1][0]
    second = RunningAgent(tmp_path, {"interval": 1}, [])
    try:
        second.wait_ready(60)
        sse2 = SseClient(second, last_seen)  # a client reconnecting after the restart
        Churn(cgroups, 20, 0.01, workers=4).run(2)
        stored = _settled(second, sse2)
        sse2.close()
    finally:
        second.stop()
    ids = [i for i, _ in stored]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "ids not consecutive"
    types = [t for _, t in stored]
    assert types.count("agent_started") == 2 and types.count("agent_stopped") == 1
    assert types.count("container_stopped") >= 40  # the lives of both runs
    # Every event exactly once over the two streams, in id order, as stored.
    assert sse1.got + sse2.got == stored


def _seed(db: Path, events: int, usage_rows: int) -> None:
    """Many old events and closed ledger rows, written straight into the agent's store."""
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO events (ts_ns, type, severity, container_id, container_name, runtime,"
            " cgroup, inode, kind, fields) VALUES (?, 'killed', 'info', ?, 'n', 'runc', ?, 1,"
            " 'container', '{\"i\": 1}')",
            ((time.time_ns(), f"c{i % 1000:063d}", f"/seed/{i % 1000}") for i in range(events)))
        conn.executemany(
            "INSERT INTO ledger_incarnation VALUES ('seed-boot', ?, 'h', ?, '{}', '{}')",
            ((i, f"/seed/{i}") for i in range(1000)))
        conn.executemany(
            "INSERT INTO ledger_usage VALUES ('seed-boot', ?, 'self', 'cpu_usec', ?, ?, 0, 5, 1,"
            " 0, 1, '{}')",
            ((i % 1000, 3600 * (i // 1000), 3600 * (i // 1000 + 1)) for i in range(usage_rows)))


def _during(agent: RunningAgent, path: str) -> int:
    """/healthz answers completed while one large request to `path` was in flight."""
    done: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            # 503 (a cycle late on this busy host) is an answer too: the loop is free.
            with contextlib.suppress(urllib.error.HTTPError):
                agent.get_text("/healthz")
            done.append(time.monotonic())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        agent.wait_for(lambda: done, timeout=30)
        start = time.monotonic()
        with urllib.request.urlopen(agent.base_url + path, timeout=120) as resp:
            answered = time.monotonic()  # the headers: the server finished the query
            assert resp.status == 200 and resp.read()
    finally:
        stop.set()
        poller.join(30)
    n = sum(1 for t in done if start < t < answered)
    print(f"{time.strftime('%T')} {path}: {answered - start:.3f} s, {n} /healthz answered")
    return n


def test_large_events_query_and_billing_export_do_not_stall_healthz(tmp_path: Path) -> None:
    config = {"interval": 1, "events": {"retention_count": 1_000_000}}  # keep the seeded rows
    first = RunningAgent(tmp_path, config, [])
    try:
        first.wait_ready(60)
    finally:
        first.stop()
    _seed(tmp_path / "state" / "agent.db", events=200_000, usage_rows=30_000)
    agent = RunningAgent(tmp_path, config, [])
    try:
        agent.wait_ready(60)
        # Pages of 10,000 events: the query and its JSON ran on the event loop before the
        # writer thread, and no /healthz was answered meanwhile (main: 0 for each).
        for query in ("since=0", "since=50000", "type=killed", "container=nomatch-nomatch"):
            assert _during(agent, f"/api/v1/events?{query}&limit=10000") >= 3
        assert _during(agent, "/api/v1/billing?from=0&format=csv") >= 3
    finally:
        agent.stop()
