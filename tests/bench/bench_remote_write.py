"""Remote-write encoding cost: 1,000 workloads with every sample part, as one push.

Prints series, request bytes before and after snappy, and the CPU seconds the encoder thread
spends (families -> protobuf -> snappy), with snappy from cramjam (what the agent uses) and,
in the same run, from the pure-Python compressor it replaced (tests/support/pure_snappy.py).
Run: .venv/bin/python tests/bench/bench_remote_write.py
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.exporters import remote_write
from agent.exporters.metrics import snapshot_families
from agent.exporters.remote_write import families_to_batches
from agent.exporters.remote_write_codec import snappy_decompress
from agent.model.snapshot import HostInfo, Snapshot
from tests.support import pure_snappy
from tests.support.bench_workloads import N, workload


def main() -> None:
    host = HostInfo("bench", "b", "m", "k", "unified", 8, 1 << 34, "0")
    states = {w.identity.id: w for w in (workload(i) for i in range(N))}
    snap = Snapshot(1, time.time_ns(), 0, 0, host, MappingProxyType(states))
    t0 = time.process_time()
    families = snapshot_families(snap)
    t1 = time.process_time()
    labels = {"job": "container-agent", "instance": "h"}
    batches = families_to_batches(families, 1, labels, 2000)
    t2 = time.process_time()
    tracemalloc.start()  # a second pass, untimed: tracemalloc slows allocation a lot
    families_to_batches(families, 1, labels, 2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    raw = sum(len(snappy_decompress(b.body)) for b in batches)
    sent = sum(len(b.body) for b in batches)
    samples = sum(b.samples for b in batches)
    print(f"workloads {N}, samples {samples}, requests {len(batches)}")
    print(f"protobuf {raw / 1e6:.2f} MB, snappy {sent / 1e6:.2f} MB (ratio {raw / sent:.1f})")
    print(f"families {t1 - t0:.3f} s CPU, encode+compress {t2 - t1:.3f} s CPU "
          f"({samples / (t2 - t1):.0f} samples/s)")
    cramjam_s = (t1 - t0) + (t2 - t1)
    remote_write.snappy_compress = pure_snappy.snappy_compress  # type: ignore[assignment]
    t3 = time.process_time()
    families_to_batches(snapshot_families(snap), 1, labels, 2000)
    pure_s = time.process_time() - t3
    print(f"CPU per push (families + encode + compress): pure-Python snappy {pure_s:.3f} s, "
          f"cramjam {cramjam_s:.3f} s (ratio {pure_s / cramjam_s:.1f})")
    print(f"peak memory allocated while encoding {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
