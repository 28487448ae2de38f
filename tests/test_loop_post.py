"""LoopPoster: calls from threads run on the loop in the order posted, one wake-up for many."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref

import pytest

from agent.core.loop_post import LoopPoster, poster_for


def test_calls_posted_before_the_loop_runs_take_one_wake_up_in_order() -> None:
    loop = asyncio.new_event_loop()
    try:
        poster = LoopPoster(loop)
        ran: list[int] = []
        t = threading.Thread(target=lambda: [poster.post(ran.append, i) for i in range(100)])
        t.start()
        t.join()
        assert ran == []  # nothing runs off the loop
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ran == list(range(100))
        assert (poster.posts, poster.wakeups) == (100, 1)
        poster.post(ran.append, 100)  # after the run: a new wake-up
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ran[-1] == 100 and poster.wakeups == 2
    finally:
        loop.close()


def test_two_threads_posting_while_the_loop_runs_lose_nothing() -> None:
    loop = asyncio.new_event_loop()
    n = 20_000
    got: dict[str, list[int]] = {"a": [], "b": []}
    try:
        poster = LoopPoster(loop)
        done = asyncio.Event()

        def record(name: str, i: int) -> None:
            got[name].append(i)
            if len(got["a"]) + len(got["b"]) == 2 * n:
                done.set()

        def produce(name: str) -> None:
            for i in range(n):
                poster.post(record, name, i)

        async def main() -> None:
            threads = [threading.Thread(target=produce, args=(k,)) for k in got]
            for t in threads:
                t.start()
            await asyncio.wait_for(done.wait(), 30)
            for t in threads:
                t.join()

        loop.run_until_complete(main())
        # Each thread's calls ran once each, in its order; fewer wake-ups than calls.
        assert got == {"a": list(range(n)), "b": list(range(n))}
        assert poster.posts == 2 * n
        assert 1 <= poster.wakeups < poster.posts
    finally:
        loop.close()


def test_a_failing_call_is_logged_and_the_rest_run(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        poster = LoopPoster(loop)
        ran: list[str] = []

        def boom() -> None:
            raise ValueError("bad call")

        poster.post(ran.append, "before")
        poster.post(boom)
        poster.post(ran.append, "after")
        with caplog.at_level(logging.ERROR, logger="agent.loop"):
            loop.run_until_complete(asyncio.sleep(0.01))
        assert ran == ["before", "after"]
        assert any(r.exc_info and "bad call" in str(r.exc_info[1]) for r in caplog.records)
    finally:
        loop.close()


def test_a_closed_loop_refuses_and_keeps_nothing() -> None:
    loop = asyncio.new_event_loop()
    poster = LoopPoster(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        poster.post(print, "never")
    with pytest.raises(RuntimeError):  # not taken for scheduled: it tries again, and says so
        poster.post(print, "never")


def test_one_poster_per_loop_kept_no_longer_than_the_loop() -> None:
    a, b = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert poster_for(a) is poster_for(a)
        assert poster_for(a) is not poster_for(b)
    finally:
        a.close()
        b.close()
    poster, gone = poster_for(a), weakref.ref(a)
    del a
    gc.collect()
    assert gone() is None  # the map of posters does not keep the loop alive
    with pytest.raises(RuntimeError):
        poster.post(print, "never")
