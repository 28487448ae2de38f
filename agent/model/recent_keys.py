"""A set of the latest N keys added (oldest forgotten first): for facts about ended things
that must outlive them for a while, but not forever (removed incarnations, ended lives)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentKeys(Generic[K]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: dict[K, None] = {}  # insertion-ordered: the oldest first

    def add(self, key: K) -> None:
        self._keys[key] = None
        if len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class RecentValues(Generic[K, V]):
    """The latest N keys added, each with a value (oldest forgotten first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: dict[K, V] = {}  # insertion-ordered: the oldest first

    def put(self, key: K, value: V) -> None:
        self._values.pop(key, None)  # to the end: the newest
        self._values[key] = value
        if len(self._values) > self.limit:
            del self._values[next(iter(self._values))]

    def get(self, key: K) -> V | None:
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)
