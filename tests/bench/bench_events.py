"""Events: kernel-to-log latency, emit throughput, and event-loop lag with a dead sink.

- latency: a process in a fresh cgroup exits (container_stopped) or is OOM-killed
  (oom_kill); time from our waitpid() seeing it die to the event's timestamp;
- emit: events stored per second (SQLite WAL, one transaction each);
- dead sink: a webhook that never answers, 2,000 events emitted; the largest lateness of a
  100 ms ticker on the loop (what a collection cycle would see).
Prints figures; asserts nothing about time. Run as root:
`.venv/bin/python tests/bench/bench_events.py [ROUNDS]`.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from tests.support.cgroups import CgroupFactory
from tests.test_events_harness import Harness, started

PY = sys.executable


def ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values) * 1e3:.1f} ms, "
            f"max {values[-1] * 1e3:.1f} ms (n={len(values)})")


async def latency(h: Harness, factory: CgroupFactory, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    stop_lat: list[float] = []
    oom_lat: list[float] = []
    for _ in range(rounds):
        cg = factory.create()
        await h.wait_for(lambda cg=cg: h.comp.watcher and cg.rel in h.comp.watcher.cgroups)
        cg.write("memory", "memory.limit_in_bytes", str(32 << 20))
        p = cg.spawn([PY, "-S", "-c", "import time; time.sleep(0.2); x = bytearray(200 << 20)"])
        await loop.run_in_executor(None, p.wait)
        died = time.time_ns()
        kills = await h.wait_for(lambda cg=cg: h.events("oom_kill", cg.rel))
        stopped = await h.wait_for(lambda cg=cg: h.events("container_stopped", cg.rel))
        oom_lat.append((kills[0].ts_ns - died) / 1e9)
        stop_lat.append((stopped[0].ts_ns - died) / 1e9)
        cg.remove()
    print(f"oom_kill event after the victim's death:      {ms(oom_lat)}")
    print(f"container_stopped event after the last exit:  {ms(stop_lat)}")
    print("  (negative: the event was stored before our waitpid() returned)")


async def emit_rate(h: Harness, n: int = 5000) -> None:
    who = WorkloadIdentity("bench", WorkloadKind.CONTAINER, "runc", "bench", "/bench", 1)
    t0 = time.perf_counter()
    for i in range(n):
        h.ctx.emit("killed", who, "", {"i": i})
    dt = time.perf_counter() - t0
    print(f"emit: {n / dt:,.0f} events/s stored ({dt / n * 1e6:.0f} µs each)")


async def dead_sink(tmp: Path) -> None:
    with socket.socket() as s:  # accepts (kernel backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        async with started(tmp, watch_new_cgroups=False, webhook_url=url, queue_size=100,
                           delivery_timeout_s=1, retry_limit=2) as h:
            lateness: list[float] = []

            async def ticker() -> None:
                nxt = time.monotonic()
                while True:
                    nxt += 0.1
                    await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                    lateness.append(time.monotonic() - nxt)

            task = asyncio.create_task(ticker())
            who = WorkloadIdentity("b", WorkloadKind.CONTAINER, "", "b", "/b", 1)
            for burst in range(20):
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda b=burst: [h.ctx.emit("killed", who, "", {"b": b})
                                           for _ in range(100)])
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            task.cancel()
            sink = h.comp.sinks[0]
            print(f"dead webhook: 2,000 events, dropped {sink.dropped}, delivered "
                  f"{sink.delivered}; 100 ms ticker lateness {ms(lateness)}")


async def main(rounds: int) -> None:
    factory = CgroupFactory(tag="bench-ev")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with started(Path(tmp)) as h:
                await latency(h, factory, rounds)
                await emit_rate(h)
        with tempfile.TemporaryDirectory() as tmp:
            await dead_sink(Path(tmp))
    finally:
        factory.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
