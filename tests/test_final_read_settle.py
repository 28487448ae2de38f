"""`settled`: the CPU counter read at `populated 0` is re-read until two reads agree."""

from __future__ import annotations

from collections.abc import Callable

from agent.kernel.final_read import settled


def reads(*values: bytes | None) -> tuple[Callable[[], bytes | None], list[int]]:
    calls: list[int] = []
    it = iter(values)

    def read() -> bytes | None:
        calls.append(1)
        return next(it)
    return read, calls


def test_a_read_that_moved_is_taken_again_until_it_holds() -> None:
    read, calls = reads(b"usage_usec 12095", b"usage_usec 12115", b"usage_usec 12115", b"x")
    assert settled(read) == b"usage_usec 12115"
    assert len(calls) == 3


def test_the_last_read_before_the_cgroup_went_is_kept() -> None:
    read, _ = reads(b"usage_usec 5", b"usage_usec 7", None)
    assert settled(read) == b"usage_usec 7"
    read, _ = reads(None)
    assert settled(read) is None


def test_reads_are_bounded_while_it_keeps_moving() -> None:
    read, calls = reads(*(f"usage_usec {i}".encode() for i in range(10)))
    assert settled(read, tries=3) == b"usage_usec 3"
    assert len(calls) == 4


def test_with_the_rmdir_probe_the_first_read_is_taken_without_yielding() -> None:
    """settle_at_empty off (the probe keeps the exact value): one read, no yield."""
    read, calls = reads(b"usage_usec 1", b"usage_usec 2")
    yields: list[int] = []
    assert settled(read, tries=0, give_way=lambda: yields.append(1)) == b"usage_usec 1"
    assert len(calls) == 1 and not yields
