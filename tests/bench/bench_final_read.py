"""The final read's own cost: CgroupReader.read of a cgroup right after it emptied (`populated
0`), the read the agent races the runtime's rmdir with, on N real cgroups.

Each cgroup runs a CPU burner while the reader reads it a few times (as cycles would), then
every burner is killed (by PID) and, once each cgroup reports `populated 0`, its final read is
timed: thread CPU time (time.thread_time_ns) and wall time, and the files it read. Nothing
else runs, so this is the read's floor, not the latency under load (bench_soak.py has that).
Prints figures; asserts nothing. To compare with another checkout, run this file from that
tree (each side imports its own `collectors`).
Run as root: `.venv/bin/python tests/bench/bench_final_read.py [--count 300] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.cgroupfs import CgroupReader
from tests.support.cgroups import CgroupFactory, TestCgroup, cgroup_factory
from tests.support.files_read import files_read
from tests.support.quantiles import quantile


def _emptied(cg: TestCgroup) -> bool:
    return "populated 0" in cg.read(cg.factory.ref_key, "cgroup.events")


def one_round(factory: CgroupFactory, count: int, rnd: int) -> tuple[list[int], list[int], int]:
    """(CPU ns per final read, wall ns per final read, files read in all)."""
    cgs = [factory.create(f"r{rnd}-{i:04d}") for i in range(count)]
    procs = [cg.burn() for cg in cgs]
    reader = CgroupReader(factory.layout)
    try:
        for _ in range(3):
            for cg in cgs:
                reader.read(cg.rel, in_pass=True)
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(_emptied(cg) for cg in cgs):
            if time.monotonic() > deadline:
                raise SystemExit("cgroups did not empty within 30 s")
            time.sleep(0.01)
        cpu: list[int] = []
        wall: list[int] = []
        with files_read() as files:
            for cg in cgs:
                c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                s = reader.read(cg.rel)
                cpu.append(time.thread_time_ns() - c0)
                wall.append(time.perf_counter_ns() - w0)
                if s.populated is not False:
                    raise SystemExit(f"{cg.rel}: not read as emptied")
        return cpu, wall, len(files)
    finally:
        reader.close()
        for cg in cgs:
            cg.remove()


def _q(values: list[int], q: float) -> float:
    return quantile(values, q) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    with cgroup_factory("bench-final") as factory:
        print(f"{root}: {factory.layout.kind.value} host, {args.count} cgroups per round")
        medians = []
        for rnd in range(args.rounds):
            cpu, wall, files = one_round(factory, args.count, rnd)
            medians.append(statistics.median(cpu))
            print(f"  round {rnd}: CPU p50 {_q(cpu, 0.5):.0f} us, p99 {_q(cpu, 0.99):.0f} us; "
                  f"wall p50 {_q(wall, 0.5):.0f} us, p99 {_q(wall, 0.99):.0f} us; "
                  f"{files / args.count:.1f} files per read")
        print(f"final read CPU, median of the rounds' medians: "
              f"{statistics.median(medians) / 1e3:.0f} us")


if __name__ == "__main__":
    main()
