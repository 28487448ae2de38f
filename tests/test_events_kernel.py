"""Kernel-driven events on real cgroups: no snapshot is ever given to the component here, so
every event below came from a kernel notification (inotify, eventfd, PSI trigger), not from a
collection cycle."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from collectors.parsers import parse_flat
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.test_events_harness import Harness, started

PY = sys.executable
SHORT_LIFE = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<0.05: pass"


def _watched(h: Harness, cg: TestCgroup) -> bool:
    assert h.comp.watcher is not None
    return cg.rel in h.comp.watcher.cgroups


def _limit(cg: TestCgroup, ctrl: str, v1_file: str, v2_file: str, value: str) -> None:
    """Set a limit in the v1 hierarchy where the controller lives there, else in cgroup2."""
    if ctrl in cg.dirs:
        cg.write(ctrl, v1_file, value)
    elif (cg.ref_dir / v2_file).exists():
        cg.write("unified", v2_file, value)
    else:
        pytest.skip(f"test cgroups have no {ctrl} controller here")


def _counter(cg: TestCgroup, ctrl: str, v1_file: str, v2_file: str, key: str) -> int:
    """The kernel's own count, read the way an operator would."""
    key_dir = ctrl if ctrl in cg.dirs else "unified"
    text = cg.read(key_dir, v1_file if ctrl in cg.dirs else v2_file)
    return parse_flat(text.encode())[key]


async def _wait_exit(proc: object) -> None:
    await asyncio.get_running_loop().run_in_executor(None, proc.wait)  # type: ignore[attr-defined]


def test_short_lived_cgroup_started_and_stopped_with_exact_cpu(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    async def body() -> None:
        async with started(tmp_path) as h:
            cg = cgroups.create()
            await h.wait_for(lambda: _watched(h, cg))
            # A process living about 50 ms.
            proc = cg.spawn([PY, "-S", "-c", SHORT_LIFE])
            await _wait_exit(proc)
            stopped = await h.wait_for(lambda: h.events("container_stopped", cg.rel))
            kernel = cg.cpu_usage_usec()  # still there: read before removal
            assert [e.type for e in h.events(container=cg.rel)][:2] == [
                "container_started", "container_stopped"]
            assert len(stopped) == 1
            f = stopped[0].fields
            assert f["final"] is True
            assert f["cpu_usage_usec"] == kernel > 0
            assert stopped[0].container is not None
            assert stopped[0].container.inode == cg.ref_dir.stat().st_ino
            finals = [s for who, s in h.finals if who.cgroup == cg.rel]
            assert finals and finals[0].cpu is not None
            assert finals[0].cpu.usage_usec == kernel
    asyncio.run(body())


def test_oom_kills_one_event_per_kill(cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as h:
            cg = cgroups.create()
            _limit(cg, "memory", "memory.limit_in_bytes", "memory.max", str(32 << 20))
            await h.wait_for(lambda: _watched(h, cg))
            proc = cg.spawn(["sh", "-c", "for i in 1 2 3; do "
                             f"{PY} -S -c 'x = bytearray(200 << 20)'; done"])
            await _wait_exit(proc)
            kernel = _counter(cg, "memory", "memory.oom_control", "memory.events.local",
                              "oom_kill")
            assert kernel >= 3
            kills = await h.wait_for(
                lambda: (e := h.events("oom_kill", cg.rel)) and len(e) >= kernel and e)
            assert len(kills) == kernel
            assert [e.fields["total"] for e in kills] == list(range(1, kernel + 1))
            assert all(e.severity == "error" for e in kills)
    asyncio.run(body())


def test_pids_limit_hit(cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as h:
            cg = cgroups.create()
            _limit(cg, "pids", "pids.max", "pids.max", "3")
            await h.wait_for(lambda: _watched(h, cg))
            proc = cg.spawn(["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1 & done; wait"])
            await _wait_exit(proc)
            kernel = _counter(cg, "pids", "pids.events", "pids.events", "max")
            assert kernel > 0
            hits = await h.wait_for(lambda: (e := h.events("pids_max", cg.rel)) and sum(
                int(x.fields["count"]) for x in e) >= kernel and e)
            assert sum(int(x.fields["count"]) for x in hits) == kernel
            assert hits[-1].fields["total"] == kernel
    asyncio.run(body())


def test_cpu_contention_gives_pressure_event(cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path, some_stall_us=100_000, window_us=2_000_000,
                           pressure_resources=["cpu"]) as h:
            cg = cgroups.create()
            await h.wait_for(lambda: _watched(h, cg))
            assert h.comp.watcher is not None
            assert h.comp.watcher.psi_error is None
            code = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<8: pass"
            # Twice as many spinners as usable CPUs: each waits for a CPU half the time.
            for _ in range(2 * len(os.sched_getaffinity(0))):
                cg.spawn([PY, "-S", "-c", code])
            events = await h.wait_for(lambda: h.events("pressure", cg.rel), timeout=8)
            e = events[0]
            assert e.fields["resource"] == "cpu"
            assert e.fields["window_us"] == 2_000_000
            assert int(e.fields["some_total_usec"]) > 0
            cg.stop_processes()
    asyncio.run(body())


def test_freeze_from_the_kernel_and_from_control(cgroups: CgroupFactory, tmp_path: Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as h:
            cg = cgroups.create()
            await h.wait_for(lambda: _watched(h, cg))
            cg.spawn([PY, "-S", "-c", "import time; time.sleep(30)"])
            await h.wait_for(lambda: h.events("container_started", cg.rel))
            # Someone else freezes it (docker pause would): the kernel's word is the event.
            cg.write("unified", "cgroup.freeze", "1")
            frozen = await h.wait_for(lambda: h.events("frozen", cg.rel))
            assert frozen[0].fields == {"source": "kernel"}
            # The control component freezes/thaws: its own event stands alone.
            assert h.comp.watcher is not None
            who = h.comp.watcher.cgroups[cg.rel].identity
            cg.write("unified", "cgroup.freeze", "0")
            h.ctx.emit("thawed", who, "", {"outcome": "ok", "duration_s": 0.01})
            await asyncio.sleep(1.0)  # past the grace the kernel's thaw waits
            thawed = h.events("thawed", cg.rel)
            assert [e.fields.get("outcome") for e in thawed] == ["ok"]
            cg.stop_processes()
    asyncio.run(body())


def test_fds_are_released_when_cgroups_go(cgroups: CgroupFactory, tmp_path: Path) -> None:
    def fds_into(names: set[str]) -> list[str]:
        """Our open fds whose target lies in one of these cgroups (PSI triggers, oom_control);
        other tests' cgroups come and go meanwhile, so count by target, not in total."""
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if any(f"/{name}/" in target for name in names):
                out.append(target)
        return out

    async def body() -> None:
        async with started(tmp_path) as h:
            assert h.comp.watcher is not None
            watcher = h.comp.watcher
            made = [cgroups.create() for _ in range(5)]
            names = {cg.name for cg in made}
            for cg in made:
                cg.spawn([PY, "-S", "-c", "import time; time.sleep(30)"])
            await h.wait_for(lambda: all(
                (w := watcher.cgroups.get(cg.rel)) is not None and w.psi
                and (w.oom_fds or "memory" not in cg.dirs) for cg in made))
            assert len(fds_into(names)) >= 5
            for cg in made:
                cg.remove()
            await h.wait_for(lambda: not any(cg.rel in watcher.cgroups for cg in made))
            await h.wait_for(lambda: not fds_into(names))
            assert not any(p.rsplit("/", 1)[-1] in names for p in watcher._dir_by_path)
            assert all(cg.path.rsplit("/", 1)[-1] not in names
                       for cg in watcher._file_wds.values())

            def stopped() -> set[str]:
                return {e.container.cgroup for e in h.events("container_stopped")
                        if e.container is not None}
            # The final reads' results reach the loop a moment after the watch let go.
            await h.wait_for(lambda: {cg.rel for cg in made} <= stopped())
    asyncio.run(body())


def test_lives_shorter_than_our_reaction(cgroups: CgroupFactory, tmp_path: Path) -> None:
    """The loop is kept busy while the process runs (the kernel watch's thread may still see
    it start, or not: then the whole life lies between two reads of cgroup.events, or before
    the cgroup was even watched, and the start is `coalesced`): started and stopped come,
    with the exact CPU."""
    async def body() -> None:
        async with started(tmp_path) as h:
            before_watch = cgroups.create()  # no await until the process is gone
            before_watch.spawn([PY, "-S", "-c", SHORT_LIFE]).wait()
            watched = cgroups.create()
            await h.wait_for(lambda: _watched(h, watched))
            watched.spawn([PY, "-S", "-c", SHORT_LIFE]).wait()  # both notifications, one read
            for cg in (before_watch, watched):
                stopped = await h.wait_for(lambda cg=cg: h.events("container_stopped", cg.rel))
                kinds = [e.type for e in h.events(container=cg.rel)]
                assert kinds == ["container_started", "container_stopped"]
                assert stopped[0].fields["cpu_usage_usec"] == cg.cpu_usage_usec() > 0
    asyncio.run(body())
