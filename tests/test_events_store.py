"""The event log on a real SQLite store: ids, queries, retention."""

from __future__ import annotations

from pathlib import Path

from agent.core.store import Store
from agent.events.model import EventContainer
from agent.events.store import EventLog
from tests.support.tracked import track

C = EventContainer("id-" + "9" * 20, "svc", "docker", "/docker/abc", 12, "container")


def _log(tmp_path: Path) -> EventLog:
    return EventLog(track(Store(tmp_path / "agent.db")))


def test_ids_increase_and_survive_retention_and_reopen(tmp_path: Path) -> None:
    log = _log(tmp_path)
    ids = [log.append("killed", C, "info", {"i": i}, 1_000 + i).id for i in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert log.prune(max_age_s=0, max_count=3, now_ns=2_000) == 7
    assert [e.id for e in log.query(0)] == ids[-3:]
    # Every row deleted: the next id still goes on from the highest ever given.
    assert log.prune(max_age_s=0, max_count=1, now_ns=2_000) == 2
    log.store.execute("DELETE FROM events")
    again = _log(tmp_path)  # a restart: migrate is idempotent
    assert again.append("thawed", None, "info", {}, 3_000).id == ids[-1] + 1
    assert again.last_id() == ids[-1] + 1


def test_retention_by_age(tmp_path: Path) -> None:
    log = _log(tmp_path)
    day = 86_400 * 10**9
    for age_days in (30, 20, 10, 1, 0):
        log.append("killed", C, "info", {"age": age_days}, 100 * day - age_days * day)
    assert log.prune(max_age_s=14 * 86_400, max_count=0, now_ns=100 * day) == 2
    assert [e.fields["age"] for e in log.query(0)] == [10, 1, 0]


def test_query_latest_page_and_filters(tmp_path: Path) -> None:
    log = _log(tmp_path)
    other = EventContainer("other_id_%_with_wildcards", "x", "", "/x", 1)
    for i in range(5):
        log.append("oom_kill" if i % 2 else "killed", C if i < 4 else other, "error", {"i": i}, i)
    assert [e.fields["i"] for e in log.query(limit=2)] == [3, 4]  # the latest, in id order
    assert [e.fields["i"] for e in log.query(types=("oom_kill",))] == [1, 3]
    assert [e.fields["i"] for e in log.query(container="svc")] == [0, 1, 2, 3]
    assert [e.fields["i"] for e in log.query(container="/docker/abc")] == [0, 1, 2, 3]
    assert [e.fields["i"] for e in log.query(container=C.id[:12])] == [0, 1, 2, 3]
    # LIKE wildcards in a prefix are literal characters.
    assert [e.fields["i"] for e in log.query(container="other_id_%_w")] == [4]
    assert log.query(container="other_id_x_w") == []
    e = log.query(types=("killed",), container="svc", limit=1)[0]
    assert e.container == C and e.severity == "error" and e.to_json()["time"].endswith("Z")
