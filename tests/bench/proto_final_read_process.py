"""PROTOTYPE, a measurement for the next design step (not the agent): the final read in a
process of its own. It watches every `cgroup.events` under a running `bench_soak.py`'s prefix
(in the unified hierarchy) and, at `populated 0`, reads the cgroup's sample with the collectors'
CgroupReader, by path; it prints the latency from the batch taken off inotify to the finished
read, as the agent's own histogram measures it. Compare it with the soak's "latest reads" of the
same run. Asserts nothing.
Run as root, beside a soak: `.venv/bin/python tests/bench/bench_soak.py --duration 120 &
.venv/bin/python tests/bench/proto_final_read_process.py 125 [NICE]`.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.cgroupfs import CgroupReader
from collectors.inotify import IN_CREATE, IN_IGNORED, IN_ISDIR, IN_MODIFY, Inotify
from collectors.layout import detect_layout
from collectors.parsers import parse_events


def soak_prefix(unified: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for root, dirs, _ in os.walk(unified):
            for d in dirs:
                if d.startswith("ca-test-soak-"):
                    return os.path.join(root, d)
        time.sleep(0.2)
    raise SystemExit("no bench_soak prefix found")


def main() -> None:
    seconds = float(sys.argv[1])
    os.nice(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    layout = detect_layout()
    if layout.unified is None:
        raise SystemExit("needs a unified hierarchy")
    unified = str(layout.unified)
    reader = CgroupReader(layout, max_open_dirs=2048)
    ino = Inotify()
    base = soak_prefix(unified)
    base_wd = ino.add_watch(base, IN_CREATE)
    dirs: dict[int, str] = {}
    latency: list[float] = []
    failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not select.select([ino.fd], [], [], 0.5)[0]:
            continue
        events = ino.read_events()
        t0 = time.monotonic_ns()
        for ev in events:
            if ev.wd == base_wd and ev.mask & IN_CREATE and ev.mask & IN_ISDIR:
                d = os.path.join(base, ev.name)
                with contextlib.suppress(OSError):  # already gone
                    dirs[ino.add_watch(d + "/cgroup.events", IN_MODIFY)] = d
            elif ev.mask & IN_IGNORED:
                dirs.pop(ev.wd, None)
            elif ev.wd in dirs:
                d = dirs[ev.wd]
                try:
                    with open(d + "/cgroup.events", "rb") as f:
                        if parse_events(f.read())[0] is not False:  # populated 0 only
                            continue
                    reader.read("/" + os.path.relpath(d, unified))
                except OSError:
                    failed += 1
                    continue
                latency.append((time.monotonic_ns() - t0) / 1e6)
    ino.close()
    if not latency:
        raise SystemExit("no final reads")
    v = sorted(latency)

    def q(p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    print(f"final reads in a process of their own: {len(v)}, {failed} failed; p50 {q(0.5):.2f} "
          f"ms, p90 {q(0.9):.2f} ms, p99 {q(0.99):.2f} ms, max {v[-1]:.2f} ms")


if __name__ == "__main__":
    main()
