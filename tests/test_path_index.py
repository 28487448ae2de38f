"""PathIndex: the kernel watch's subtree lookups, checked against a scan of every key."""

from __future__ import annotations

import random

import pytest

from agent.kernel.path_index import PathIndex


def _scan(keys: set[str], rel: str) -> list[str]:
    prefix = rel.rstrip("/") + "/"
    return sorted(k for k in keys if k == rel or k.startswith(prefix))


def test_subtree_is_what_a_scan_of_every_key_finds() -> None:
    rng = random.Random(11)
    names = ["a", "a-b", "a.b", "a0", "b", "pod1", "pod1/c", "x y", "é"]
    index: PathIndex[int] = PathIndex()
    live: set[str] = set()
    for step in range(4000):
        path = "/" + "/".join(rng.choice(names) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.6:
            index[path] = step
            live.add(path)
        elif rng.random() < 0.5:
            index.pop(path, None)
            live.discard(path)
        elif path in index:
            del index[path]
            live.discard(path)
        probe = "/" + "/".join(rng.choice(names) for _ in range(rng.randint(0, 2)))
        assert index.subtree(probe) == _scan(live, probe)
    assert set(index) == live
    assert index.subtree("/") == sorted(live)


def test_siblings_that_share_a_prefix_are_not_below() -> None:
    index: PathIndex[str] = PathIndex()
    for path in ("/a", "/a/b", "/a/b/c", "/a-b", "/a.b", "/a0", "/ab", "/"):
        index[path] = path
    assert index.subtree("/a") == ["/a", "/a/b", "/a/b/c"]
    assert index.subtree("/a/") == ["/a", "/a/b", "/a/b/c"]
    assert index.subtree("/a/b") == ["/a/b", "/a/b/c"]
    assert index.subtree("/gone") == []
    index.pop("/a/b")
    assert index.subtree("/a") == ["/a", "/a/b/c"]
    assert index.pop("/a/b", "missing") == "missing"
    with pytest.raises(KeyError):
        index.pop("/a/b")
    index.clear()
    assert index.subtree("/") == []


def test_mutators_that_would_skip_the_sorted_keys_refuse() -> None:
    index: PathIndex[int] = PathIndex()
    with pytest.raises(TypeError):
        index.update({"/a": 1})
    with pytest.raises(TypeError):
        index.setdefault("/a", 1)
    assert index.subtree("/") == []
