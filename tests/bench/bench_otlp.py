"""OTLP push cost: 1,000 workloads with every sample part, as the exporter's encoder thread
does it (resource attributes, start times, opentelemetry-proto messages, serialize, gzip).

Prints CPU per push for the first push (resources and start times computed) and for later
pushes (cached), the split between building messages, serializing and gzip, and the bytes.
Target: <= 50 ms CPU per push. Run: .venv/bin/python tests/bench/bench_otlp.py [--rounds N]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cramjam

from agent.exporters.otlp import OtlpComponent
from agent.exporters.otlp_encode import build_requests
from agent.model.snapshot import HostInfo, Snapshot
from tests.support.bench_workloads import N, workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    host = HostInfo("bench", "b", "m", "k", "unified", 8, 1 << 34, "0")
    states = {w.identity.id: w for w in (workload(i) for i in range(N))}
    comp = OtlpComponent()
    comp.configure({"resource_attributes": {"deployment.environment": "bench"}})

    def snapshot(seq: int) -> Snapshot:
        return Snapshot(seq, time.time_ns(), 0, 0, host, MappingProxyType(states))

    t0 = time.process_time()
    batches = comp.encode(snapshot(0), [])
    first = time.process_time() - t0
    later = []
    for seq in range(1, args.rounds + 1):
        t0 = time.process_time()
        batches = comp.encode(snapshot(seq), [])
        later.append(time.process_time() - t0)
    points = sum(b.samples for b in batches)
    sent = sum(len(b.body) for b in batches)
    raw = sum(len(gzip.decompress(b.body)) for b in batches)
    # The phases of one push, timed apart (same work as encode() with warm caches).
    snap = snapshot(99)
    resources = {k: v[2] for k, v in comp._resources.items()}
    start_of = {w.identity.id: comp._starts[w.identity.incarnation][0] for w in states.values()}
    t0 = time.process_time()
    requests = build_requests(snap, comp._builder, start_of, {}, resources, comp.max_points)
    t2 = time.process_time()
    bodies = [body for body, _ in requests]
    for body in bodies:
        cramjam.gzip.compress(body, level=1)
    t3 = time.process_time()
    print(f"workloads {N}, points {points}, requests {len(batches)}")
    print(f"protobuf {raw / 1e6:.2f} MB, gzip {sent / 1e3:.0f} kB (ratio {raw / sent:.1f})")
    print(f"CPU per push: first {first * 1e3:.1f} ms; later (n={len(later)}) median "
          f"{statistics.median(later) * 1e3:.1f} ms, min {min(later) * 1e3:.1f} ms, "
          f"max {max(later) * 1e3:.1f} ms (target <= 50 ms)")
    print(f"phases: build messages and serialize {(t2 - t0) * 1e3:.1f} ms, "
          f"gzip {(t3 - t2) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
