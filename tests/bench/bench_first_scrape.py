"""/metrics latency on the first scrape of each snapshot (the one that renders it) and on a
second scrape of the same snapshot (rendered bytes only), with N idle cgroups and nothing else
running: what a Prometheus that scrapes less often than the agent's cycle sees, and the agent's
CPU meanwhile. Asserts nothing.

`--compare DIR` runs the same a second time with the agent code of another checkout (e.g. `git
archive HEAD~1 | tar -x -C /tmp/before`), alternating `--pairs` times.
Run as root: `.venv/bin/python tests/bench/bench_first_scrape.py [--cgroups 1000] [--compare DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_daemon import cpu_seconds
from tests.support.agentd import RunningAgent
from tests.support.cgroups import cgroup_factory


def _ms(values: list[float]) -> str:
    v = sorted(values)
    return f"p50 {v[len(v) // 2] * 1e3:.1f} ms, max {v[-1] * 1e3:.1f} ms"


def measure(label: str, code: str | None, interval: float, scrapes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ca-bench-scrape-") as tmp:
        # `code`: agentd imports `agent` from that checkout
        agent = RunningAgent(Path(tmp), {"interval": interval}, [],
                             code=Path(code) if code else None)
        try:
            agent.wait_ready(timeout=180)
            time.sleep(3)
            first: list[float] = []
            second: list[float] = []
            cpu0, start = cpu_seconds(agent.proc.pid), time.monotonic()
            for _ in range(scrapes):
                seq = agent.get("/healthz")["snapshot_seq"]
                agent.wait_for(lambda s=seq: agent.get("/healthz")["snapshot_seq"] > s,
                               timeout=30, interval=0.02)
                time.sleep(interval / 4)  # the cycle's components done with it
                for into in (first, second):
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(agent.base_url + "/metrics", timeout=30) as r:
                        r.read()
                    into.append(time.perf_counter() - t0)
            cpu = (cpu_seconds(agent.proc.pid) - cpu0) / (time.monotonic() - start)
            print(f"[{label}] first scrape of a snapshot {_ms(first)}; "
                  f"second {_ms(second)} (n={scrapes}); agent CPU {cpu * 1e3:.0f} ms/s")
        finally:
            agent.stop(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cgroups", type=int, default=1000)
    p.add_argument("--interval", type=float, default=2.0, help="agentd interval (2)")
    p.add_argument("--scrapes", type=int, default=20)
    p.add_argument("--compare", default="", help="another checkout to run the same with")
    p.add_argument("--pairs", type=int, default=2)
    args = p.parse_args()
    with cgroup_factory("bench-scrape") as factory:
        for i in range(args.cgroups):
            factory.create(f"c{i:04d}")
        for _ in range(args.pairs if args.compare else 1):
            measure("this", None, args.interval, args.scrapes)
            if args.compare:
                measure(Path(args.compare).name, str(Path(args.compare).resolve()),
                        args.interval, args.scrapes)


if __name__ == "__main__":
    main()
