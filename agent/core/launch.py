"""`agentd`'s entry point: what the process must have before Python imports the agent, then
agent.core.daemon.

glibc's per-thread cache of freed chunks (tcache: up to 7 chunks of each size up to 1 KiB, in
each thread) keeps what a thread frees out of the heap, where malloc_trim (after each cycle)
cannot hand it back: with a dozen long-lived threads allocating under churn, the soak's RSS grew
+4.9 / +5.2 MiB over 120 s with it, +3.1 without. glibc reads its tunables once, in the dynamic
loader at exec, so the agent execs itself again with `glibc.malloc.tcache_count=0` added to
GLIBC_TUNABLES: the same PID (systemd's main process stays), argv and environment, before
anything is imported (the agent's imports take ~1 s of CPU). The threads allocate under the
GIL, so the one malloc arena they share (agent.core.process_limits) hardly contends.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "GLIBC_TUNABLES"
TCACHE_OFF = "glibc.malloc.tcache_count=0"


def tunables_without_tcache(current: str | None) -> str | None:
    """GLIBC_TUNABLES with the tcache off, or None when nothing is to change: it is off
    already, or whoever started the agent chose a tcache size of their own."""
    if not current:
        return TCACHE_OFF
    if any(t.split("=", 1)[0] == "glibc.malloc.tcache_count" for t in current.split(":")):
        return None
    return f"{current}:{TCACHE_OFF}"


def exec_without_tcache() -> None:
    """Exec this process again with the tcache off (does not return), unless it is off
    already, the C library is not glibc, or the exec fails (then the agent runs as it is)."""
    if platform.libc_ver()[0] != "glibc":
        return
    tunables = tunables_without_tcache(os.environ.get(TUNABLES))
    if tunables is None:
        return
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, TUNABLES: tunables})
    except OSError as e:
        print(f"agentd: running with glibc's tcache (exec failed: {e.strerror})",
              file=sys.stderr)


def main() -> int:
    exec_without_tcache()
    from agent.core.daemon import main as daemon_main

    return daemon_main()
