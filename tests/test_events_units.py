"""Pure parts: kernel text parsers (fed arbitrary text), fields, formatting, SSE parsing."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from agent.cli.events import format_line, parse_sse
from agent.events.lifecycle import final_fields, pressure_fields, throttled_share
from agent.events.model import Event, EventContainer, severity_for
from agent.events.sinks import DeliveryPolicy, annotation
from agent.kernel.kernfs import counter_values
from collectors.samples import CgroupSample, CpuSample


def test_counter_values_of_kernel_files() -> None:
    text = "low 0\nhigh 3\nmax 35\noom 1\noom_kill 2\noom_group_kill 1\n"
    assert counter_values("memory.events", text) == {
        "low": 0, "high": 3, "max": 35, "oom": 1, "oom_kill": 2, "oom_group_kill": 1}
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert counter_values("memory.oom_control", text)["oom_kill"] == 3
    assert counter_values("memory.failcnt", "5303\n") == {"failcnt": 5303}
    assert counter_values("cgroup.events", "populated 1\nfrozen 0\n") == {
        "populated": 1, "frozen": 0}
    assert counter_values("memory.events", "torn li") == {}


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    assert isinstance(counter_values("memory.events", text), dict)
    assert isinstance(pressure_fields(text), dict)


def test_pressure_fields() -> None:
    text = ("some avg10=31.13 avg60=6.05 avg300=1.28 total=3835353\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert pressure_fields(text) == {"some_avg10": 31.13, "some_avg60": 6.05,
                                     "some_total_usec": 3835353, "full_avg10": 0.0,
                                     "full_avg60": 0.0, "full_total_usec": 0}


def _sample(mono_ms: int, throttled: int | None, inode: int = 1, usage: int = 5) -> CgroupSample:
    return CgroupSample("/x", inode, mono_ms * 10**6, 0,
                        cpu=CpuSample(usage_usec=usage, throttled_usec=throttled))


def test_throttled_share() -> None:
    assert throttled_share(_sample(0, 100), _sample(1000, 500_100)) == 0.5
    assert throttled_share(_sample(0, 100), _sample(1000, 50)) is None  # went back
    assert throttled_share(_sample(0, None), _sample(1000, 5)) is None
    assert throttled_share(_sample(0, 1), _sample(1000, 5, inode=2)) is None  # new incarnation
    assert final_fields(_sample(0, 0, usage=1_500_000))["cpu_seconds"] == 1.5


def test_delivery_backoff_is_exponential_and_capped() -> None:
    p = DeliveryPolicy(backoff_s=0.5, backoff_max_s=3)
    assert [p.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3, 3]


def test_severity_defaults() -> None:
    assert severity_for("oom_kill") == "error"
    assert severity_for("pids_max") == "warning"
    assert severity_for("container_started") == "info"
    assert severity_for("container_started", "warning") == "warning"
    assert severity_for("oom_kill", "nonsense") == "error"


def test_formatting_and_sse_round_trip() -> None:
    c = EventContainer("abc", "web", "runc", "/web", 9)
    e = Event(7, 1_700_000_000_123_000_000, "oom_kill", "error", c, {"total": 2})
    doc = e.to_json()
    assert doc["time"] == "2023-11-14T22:13:20.123Z"
    line = format_line(doc)
    assert line.split()[0] == "7" and "oom_kill" in line and "web (/web)" in line
    assert "total=2" in line
    assert annotation(e)["time"] == 1_700_000_000_123
    frames = [b"retry: 2000\n", b"\n", b": keep-alive\n", b"\n", b"id: 7\n",
              f"data: {json.dumps(doc)}\n".encode(), b"\n"]
    assert list(parse_sse(iter(frames))) == [doc]
