"""Benchmark: CgroupReader.read over 1,000 real cgroups vs two floors: bare open/read/close of
the same files, and pread at offset 0 of the same files kept open.

Run as root: `.venv/bin/python tests/bench/bench_collectors.py [--count 1000] [--rounds 5]`.

Creates the cgroups with the test CgroupFactory (one prefix, removed at the end, also on
failure), reads them all once to warm the caches the daemon keeps between cycles (v1 path
resolution, block device names), records which files that pass opened, then alternates
measured rounds of (a) CgroupReader.read for every cgroup and (b) os.open/os.read/os.close of
exactly the recorded files and (c) os.pread of the same files opened once before the rounds
(the floor for a reader that keeps its files open). Prints CPU time (time.process_time: user +
system) per round and the ratios of the medians. Target: reader / pread floor <= 1.5 (the
stretch). The fd limit is raised to the hard limit, as agentd does. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors import cgroup_dir
from collectors.cgroupfs import CgroupReader
from tests.support.cgroups import CgroupFactory


def record_files(reader: CgroupReader, paths: list[str]) -> list[str]:
    """Every file one pass of reader.read reads successfully, as absolute paths (a steady
    pass: after the first, the reader reads only what can have changed)."""
    seen: list[str] = []
    cls = cgroup_dir.CgroupDir
    orig = cls.read_many

    def recording(
        self: cgroup_dir.CgroupDir, names: Sequence[str], keep: bool = True
    ) -> list[bytes | None]:
        datas = orig(self, names, keep)
        seen.extend(f"{self.path}/{n}" for n, d in zip(names, datas, strict=True) if d is not None)
        return datas

    cls.read_many = recording  # type: ignore[method-assign]
    try:
        for p in paths:
            reader.read(p)
    finally:
        cls.read_many = orig  # type: ignore[method-assign]
    return seen


def bare(files: list[str]) -> int:
    total = 0
    for f in files:
        fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC)
        try:
            total += len(os.read(fd, 65536))
        finally:
            os.close(fd)
    return total


def pread_floor(files: list[str], chunk: int = 2000) -> float:
    """CPU seconds of one pread at offset 0 per file on fds opened beforehand (untimed), in
    chunks so that the floor's fds and the reader's kept ones fit under the fd limit."""
    spent = 0.0
    for i in range(0, len(files), chunk):
        fds = [os.open(f, os.O_RDONLY | os.O_CLOEXEC) for f in files[i : i + chunk]]
        try:
            os.pread(fds[0], 65536, 0)
            c0 = time.process_time()
            for fd in fds:
                os.pread(fd, 65536, 0)
            spent += time.process_time() - c0
        finally:
            for fd in fds:
                os.close(fd)
    return spent


def via_reader(reader: CgroupReader, paths: list[str]) -> int:
    vanished = 0
    for p in paths:
        if reader.read(p).vanished:
            vanished += 1
    return vanished


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_collectors: needs root (creates real cgroups)", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    factory = CgroupFactory(tag="bench")

    reader: CgroupReader | None = None
    try:
        t0 = time.monotonic()
        cgs = [factory.create(f"b{i:04d}") for i in range(args.count)]
        print(
            f"layout {factory.layout.kind}: created {len(cgs)} cgroups "
            f"in {time.monotonic() - t0:.1f} s"
        )
        paths = [cg.rel for cg in cgs]
        reader = CgroupReader(factory.layout)
        via_reader(reader, paths)  # warm caches, as after the daemon's first cycle
        files = record_files(reader, paths)
        print(f"files per cgroup: {len(files) / len(paths):.1f} ({len(files)} in all), "
              f"reader keeps {reader.kept_fds} fds")
        t_reader: list[float] = []
        t_bare: list[float] = []
        t_pread: list[float] = []
        for _ in range(args.rounds):
            c0 = time.process_time()
            vanished = via_reader(reader, paths)
            c1 = time.process_time()
            bare(files)
            c2 = time.process_time()
            t_pread.append(pread_floor(files))
            t_reader.append(c1 - c0)
            t_bare.append(c2 - c1)
            if vanished:
                print(f"warning: {vanished} cgroups read as vanished")
        mr, mb = statistics.median(t_reader), statistics.median(t_bare)
        mp = statistics.median(t_pread)
        print("CgroupReader.read  CPU s per round: " + " ".join(f"{t:.4f}" for t in t_reader))
        print("bare open/read/close CPU s per round: " + " ".join(f"{t:.4f}" for t in t_bare))
        print("bare pread (kept fds) CPU s per round: " + " ".join(f"{t:.4f}" for t in t_pread))
        n = len(paths)
        print(
            f"median: reader {mr * 1e6 / n:.1f} µs/cgroup, open/read/close floor "
            f"{mb * 1e6 / n:.1f} (ratio {mr / mb:.2f}), pread floor {mp * 1e6 / n:.1f} "
            f"(ratio {mr / mp:.2f}, target <= 1.5)"
        )
    finally:
        if reader is not None:
            reader.close()  # its kept directory fds
        t0 = time.monotonic()
        factory.close()
        print(f"removed the test cgroups in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
