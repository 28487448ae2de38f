"""Benchmark: how long freeze/thaw (both freezers), kill, checkpoint and restore take.

Run as root: `.venv/bin/python tests/bench/bench_control.py [--rounds 20]`.

Uses one test cgroup (CgroupFactory, removed at the end, also on failure) with the counter
workload. Freeze and thaw are timed with the functions the daemon runs (wall time from the
write to the confirmed state: `frozen 1` notification for cgroup2, FROZEN for v1). CRIU runs
only where a working CRIU is found. Prints medians and maxima in milliseconds; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.control import criu, operations
from agent.control.checkpoints import CheckpointStore
from agent.control.operations import Policy
from agent.control.targets import resolve_target
from collectors.layout import detect_layout
from tests.support import counter
from tests.support.cgroups import CgroupFactory


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1e3:7.2f} ms  max {max(values) * 1e3:7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    layout = detect_layout()
    factory = CgroupFactory(tag="bench")
    tmp = Path(tempfile.mkdtemp(prefix="ca-bench-control-"))
    try:
        cg = factory.create()
        counter.start_in(cg, tmp / "count")
        target = resolve_target(cg.rel, layout, None)
        policy = Policy()
        for freezer in ("v2", "v1"):
            try:
                operations.choose_freezer(target, layout, freezer)
            except Exception as e:
                print(f"{freezer}: skipped ({e})")
                continue
            fr, th = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                operations.freeze(target, layout, policy, freezer=freezer)
                t1 = time.perf_counter()
                operations.thaw(target, layout, policy)
                t2 = time.perf_counter()
                fr.append(t1 - t0)
                th.append(t2 - t1)
                time.sleep(0.02)
            print(f"freeze {freezer}: {_ms(fr)}   ({args.rounds} rounds)")
            print(f"thaw   {freezer}: {_ms(th)}")
        info = criu.find_criu()
        if not info.ok:
            print(f"checkpoint/restore: skipped ({info.error})")
        else:
            store = CheckpointStore(tmp / "state")
            dumps, restores, sizes = [], [], []
            for _ in range(max(3, args.rounds // 4)):
                res = criu.checkpoint(info, target, layout, policy, store)
                for p in cg.procs:
                    p.poll()  # reap what CRIU ended: restore needs the PIDs free
                dumps.append(float(str(res["duration_s"])))
                sizes.append(int(str(res["images_bytes"])))
                out = criu.restore(info, store, str(res["id"]), layout)
                restores.append(float(str(out["duration_s"])))
            print(f"checkpoint (criu {info.version}, 1 python process, "
                  f"{statistics.median(sizes) / 1e6:.1f} MB images): {_ms(dumps)}")
            print(f"restore: {_ms(restores)}")
        kills = []
        for _ in range(5):
            counter.start_in(cg, tmp / "k", child=True)
            t0 = time.perf_counter()
            operations.kill(target, policy)
            kills.append(time.perf_counter() - t0)
            for p in cg.procs:
                p.poll()
        print(f"kill (cgroup.kill, 2-4 processes until empty): {_ms(kills)}")
    finally:
        factory.close()


if __name__ == "__main__":
    main()
