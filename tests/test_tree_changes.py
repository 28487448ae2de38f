"""Tree changes waiting for the snapshot merge in order: what a batch-by-batch application
would end with, in one take."""

from __future__ import annotations

import random

from agent.kernel.tree_changes import PendingTreeChanges


def _apply(known: set[str], created: list[str], deleted: list[str]) -> None:
    """What the agent does with a take: Collector.remove_paths (each path and its subtree),
    then add_paths."""
    for path in deleted:
        known.difference_update({k for k in known if k == path or k.startswith(path + "/")})
    known.update(created)


def test_a_made_then_removed_path_is_only_removed() -> None:
    p = PendingTreeChanges()
    p.add(["/a"], [])
    p.add([], ["/a"])
    assert p.take() == ([], ["/a"])
    assert not p and len(p) == 0


def test_a_removed_then_made_path_is_removed_and_added() -> None:
    p = PendingTreeChanges()
    p.add([], ["/a"])
    p.add(["/a"], [])
    assert p.take() == (["/a"], ["/a"])


def test_one_batch_removes_before_it_makes() -> None:
    p = PendingTreeChanges()
    p.add(["/a"], ["/a"])
    assert p.take() == (["/a"], ["/a"])


def test_a_path_made_below_a_removed_one_is_not_added() -> None:
    p = PendingTreeChanges()
    p.add(["/a/b", "/ab"], [])
    p.add([], ["/a"])
    assert p.take() == (["/ab"], ["/a"])


def test_merged_batches_end_where_batch_by_batch_ends() -> None:
    rng = random.Random(11)
    paths = ["/a", "/a/b", "/a/b/c", "/a/bc", "/ab", "/d", "/d/e", "/f"]
    for _ in range(2000):
        start = set(rng.sample(paths, rng.randint(0, 8)))
        one_by_one, merged = set(start), set(start)
        p = PendingTreeChanges()
        for _ in range(rng.randint(1, 6)):
            created = rng.sample(paths, rng.randint(0, 3))
            deleted = rng.sample(paths, rng.randint(0, 3))
            _apply(one_by_one, created, deleted)
            p.add(created, deleted)
        _apply(merged, *p.take())
        assert merged == one_by_one
        assert not p
