"""RecentKeys: the latest N keys, the oldest forgotten first (memory bounded by N)."""

from __future__ import annotations

from agent.model.recent_keys import RecentKeys


def test_keeps_the_latest_keys_up_to_its_limit() -> None:
    keys: RecentKeys[tuple[str, int]] = RecentKeys(3)
    for i in range(5):
        keys.add(("/c", i))
    assert len(keys) == 3
    assert ("/c", 0) not in keys and ("/c", 1) not in keys
    assert all(("/c", i) in keys for i in (2, 3, 4))
    keys.add(("/c", 4))  # added again: nothing else is forgotten
    assert len(keys) == 3 and ("/c", 2) in keys
