"""Discovery over N real test cgroups (default 1,000): time of Discovery.scan() and its parts.

Some cgroups get a sleeping process (plain, and in new pid+mnt namespaces) so the procfs pass
and the namespace rule do real work. Prints figures; asserts nothing about time. Run as root:
`.venv/bin/python tests/bench/bench_discovery.py [N] [REPEATS]`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.identity.classify import classify
from agent.identity.discovery import Discovery
from collectors.cgroup_tree import walk
from collectors.procfs import read_processes
from collectors.runtime_state import read_runtime_states
from tests.support.cgroups import CgroupFactory


def timed(fn: object, repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of fn() over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        cpus.append((time.process_time() - c0) * 1000)
        walls.append((time.perf_counter() - w0) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main(n: int = 1000, repeats: int = 20) -> None:
    factory = CgroupFactory(tag="bench")
    try:
        t0 = time.perf_counter()
        groups = [factory.create(f"g{i // 100}") if i % 100 == 0 else None for i in range(n)]
        parents = [g for g in groups if g is not None]
        created = len(parents)
        for i in range(n - len(parents)):
            parents[i % len(parents)].child(f"c{i}")
            created += 1
        for i, g in enumerate(parents):
            argv = ["unshare", "--pid", "--mount", "--fork", "sleep", "600"] if i % 2 else [
                "sleep", "600"]
            g.spawn(argv)
        print(f"created {created} test cgroups in {time.perf_counter() - t0:.1f} s")
        disc = Discovery(factory.layout)
        found = disc.scan()
        mine = [w for w in found.values() if w.cgroup.startswith(factory.prefix_rel)]
        kinds: dict[str, int] = {}
        for w in mine:
            key = f"{w.kind.value}/{w.runtime or '-'}"
            kinds[key] = kinds.get(key, 0) + 1
        print(f"scan found {len(found)} cgroups in the tree, {len(mine)} of ours: {kinds}")
        root = factory.layout.reference_root
        dirs = walk(root)
        rows = [
            ("scan() total", lambda: disc.scan()),
            ("  walk()", lambda: walk(root)),
            ("  read_processes()", lambda: read_processes()),
            ("  read_runtime_states()", lambda: read_runtime_states()),
            ("  classify() x all, cached", lambda: [classify(d.path) for d in dirs]),
            ("  classify() x all, cold", lambda: [classify.__wrapped__(d.path) for d in dirs]),
        ]
        print(f"{len(dirs)} cgroups, {len(read_processes())} processes, median of {repeats}:")
        for label, fn in rows:
            wall, cpu = timed(fn, repeats)
            print(f"{label:26s} wall {wall:8.2f} ms   cpu {cpu:8.2f} ms")
        sample = [w.cgroup for w in mine[:100]]
        wall, cpu = timed(lambda: [disc.identify(p) for p in sample], 5)
        print(f"identify() one cgroup      wall {wall / len(sample):8.3f} ms   cpu "
              f"{cpu / len(sample):8.3f} ms")
    finally:
        factory.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
