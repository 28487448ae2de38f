"""Benchmark: Ledger.observe_snapshot for N workloads (synthetic samples, a real SQLite store
in a temp dir), and an export of the closed rows in each format.

Run: `.venv/bin/python tests/bench/bench_ledger.py [--workloads 1000] [--cycles 20]`.
Prints CPU and wall time per cycle (median), the database size, and export times. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.ledger.export import export
from agent.ledger.periods import NS
from tests.test_ledger_support import ident, open_ledger, snapshot, synth

T0 = 1_800_000_000


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", type=int, default=1000)
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--interval", type=int, default=5, help="simulated seconds between cycles")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "agent.db"
        led = open_ledger(db, period=60, grace=0)
        ids = [ident(f"/bench/c{i}", 1000 + i) for i in range(args.workloads)]
        cpu_s, wall_s = [], []
        for c in range(args.cycles):
            t = T0 + c * args.interval
            states = [(w, synth(w.cgroup, w.inode, t, cpu=c * 1000 + i, mem=(i + 1) << 20,
                                io=(c * 4096, c * 512, c, c), pids=3 + c % 2))
                      for i, w in enumerate(ids)]
            snap = snapshot(states, seq=c + 1)
            c0, w0 = time.process_time(), time.perf_counter()
            led.observe_snapshot(snap)
            cpu_s.append(time.process_time() - c0)
            wall_s.append(time.perf_counter() - w0)
        led.close_due((T0 + args.cycles * args.interval + 120) * NS)
        rows = led.storage.rows(0, 10**11)
        print(f"workloads={args.workloads} cycles={args.cycles} rows={len(rows)}")
        print(f"observe_snapshot: median cpu {statistics.median(cpu_s) * 1e3:.1f} ms, "
              f"median wall {statistics.median(wall_s) * 1e3:.1f} ms per cycle "
              f"(max wall {max(wall_s) * 1e3:.1f} ms)")
        print(f"database: {sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6:.1f} MB")
        for fmt in ("csv", "jsonl", "parquet"):
            w0 = time.perf_counter()
            body, _ = export(led.storage.rows(0, 10**11), fmt)
            print(f"export {fmt}: {len(body) / 1e6:.2f} MB in "
                  f"{(time.perf_counter() - w0) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
