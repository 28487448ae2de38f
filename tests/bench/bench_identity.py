"""What runtime identity costs the collection cycle: the cache lookup per workload.

N workloads (default 1,000), half of them containers the cache knows: time of enriching every
identity once (what a cycle adds) against the cycle's cheapest step, classifying the same
paths (lru-cached, as in discovery). The API itself is never on the cycle's path, so a hung
runtime cannot change these figures. Prints figures; asserts nothing about time.
`.venv/bin/python tests/bench/bench_identity.py [N] [REPEATS]`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.identity.classify import classify
from agent.identity.runtime_info import IdentityCache, RuntimeInfo
from agent.model.snapshot import WorkloadIdentity, WorkloadKind


def median_us(fn: object, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(runs)


def main(n: int = 1000, repeats: int = 50) -> None:
    cache = IdentityCache()
    idents = []
    for i in range(n):
        cid = f"{i:064x}"
        path = f"/docker/{cid}" if i % 2 == 0 else f"/system.slice/s{i}.service"
        idents.append(WorkloadIdentity(id=cid if i % 2 == 0 else path,
                                       kind=WorkloadKind.CONTAINER, runtime="docker",
                                       name=cid[:12], cgroup=path, inode=i))
        if i % 2 == 0:
            cache.put(RuntimeInfo("docker", cid, f"web-{i}", "local/busybox:1", "sha256:x",
                                  {"com.docker.compose.project": "shop"}))
    paths = [w.cgroup for w in idents]
    for p in paths:
        classify(p)
    enrich = median_us(lambda: [cache.enrich(w) for w in idents], repeats)
    base = median_us(lambda: [classify(p) for p in paths], repeats)
    print(f"identity cache: {n} workloads ({n // 2} named): enrich {enrich:.0f} µs per cycle "
          f"({enrich / n:.2f} µs each); classify (cached) {base:.0f} µs; ratio "
          f"{enrich / base:.1f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
