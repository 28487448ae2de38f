"""agentd's start (agent.core.launch): it execs itself once with glibc's tcache off, in the same
process, and what it frees then goes back to the heap (mallinfo2), where malloc_trim can hand
it to the kernel; a tcache size chosen by whoever starts it is kept."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.core.launch import TCACHE_OFF, tunables_without_tcache
from tests.conftest import needs_root
from tests.support.agentd import running_agent

#: In a child: its PID before and after exec_without_tcache(), GLIBC_TUNABLES, and how much
#: of 7 freed 1,000-byte chunks glibc's free space grew by (mallinfo2's fordblks, the top
#: chunk included): all of it without a tcache, none with one.
_CHILD = textwrap.dedent("""
    import ctypes, os
    from agent.core.launch import exec_without_tcache
    print("before", os.getpid(), flush=True)
    exec_without_tcache()

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(1000) for _ in range(7)]
    guard = libc.malloc(1000)  # keeps the last one from merely shrinking the top back
    free_before = libc.mallinfo2().fordblks
    for c in chunks:
        libc.free(c)
    grew = libc.mallinfo2().fordblks - free_before
    libc.free(guard)
    print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), grew, flush=True)
""")


def _child(tunables: str | None) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return [line.split() for line in out.stdout.splitlines()]


@pytest.mark.parametrize(("current", "wanted"), [
    (None, TCACHE_OFF),
    ("", TCACHE_OFF),
    ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{TCACHE_OFF}"),
    ("glibc.malloc.tcache_count=3", None),
    (f"glibc.malloc.arena_max=2:{TCACHE_OFF}", None),
    ("glibc.malloc.tcache_count_x=1", f"glibc.malloc.tcache_count_x=1:{TCACHE_OFF}"),
])
def test_the_tunables_asked_for(current: str | None, wanted: str | None) -> None:
    assert tunables_without_tcache(current) == wanted


def test_the_process_execs_once_in_place_and_frees_to_the_heap() -> None:
    assert platform.libc_ver()[0] == "glibc"  # this host's Debian
    lines = _child(None)
    # The code ran twice (the exec started it again), in one process.
    assert [x[0] for x in lines] == ["before", "before", "after"]
    pid = lines[0][1]
    assert lines[1][1] == lines[2][1] == pid
    assert lines[2][2] == TCACHE_OFF
    assert int(lines[2][3]) >= 7 * 1000  # every freed chunk is the heap's again


def test_a_tcache_size_of_its_starters_own_is_kept() -> None:
    lines = _child("glibc.malloc.tcache_count=7")
    assert [x[0] for x in lines] == ["before", "after"]  # no exec
    assert lines[1][2] == "glibc.malloc.tcache_count=7"
    assert int(lines[1][3]) < 1000  # the chunks stayed in this thread's tcache


@needs_root
def test_agentd_runs_with_the_tcache_off_as_the_process_it_was_started_as() -> None:
    with running_agent() as agent:
        pid = agent.proc.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert agent.get("/healthz")["status"] == "ok"
    assert f"GLIBC_TUNABLES={TCACHE_OFF}".encode() in environ
    assert cmdline[1].endswith(b"/agentd") and b"--config" in cmdline
