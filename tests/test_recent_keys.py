"""RecentKeys: the latest N keys, the oldest forgotten first (memory bounded by N)."""

from __future__ import annotations

from agent.model.recent_keys import RecentKeys, RecentValues


def test_keeps_the_latest_keys_up_to_its_limit() -> None:
    keys: RecentKeys[tuple[str, int]] = RecentKeys(3)
    for i in range(5):
        keys.add(("/c", i))
    assert len(keys) == 3
    assert ("/c", 0) not in keys and ("/c", 1) not in keys
    assert all(("/c", i) in keys for i in (2, 3, 4))
    keys.add(("/c", 4))  # added again: nothing else is forgotten
    assert len(keys) == 3 and ("/c", 2) in keys


def test_recent_values_keep_the_latest_keys_with_their_values() -> None:
    values: RecentValues[str, int] = RecentValues(2)
    values.put("a", 1)
    values.put("b", 2)
    values.put("a", 3)  # put again: the newest, with its new value
    values.put("c", 4)  # past the limit: the oldest ("b") is forgotten
    assert len(values) == 2
    assert (values.get("a"), values.get("b"), values.get("c")) == (3, None, 4)
