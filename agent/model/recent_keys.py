"""The latest N keys added, with a value each or as a set (oldest forgotten first): for facts
about ended things that must outlive them for a while, but not forever (removed incarnations,
ended lives and when they ended)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentValues(Generic[K, V]):
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

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)


class RecentKeys(RecentValues[K, None], Generic[K]):
    """The set form."""

    def add(self, key: K) -> None:
        self.put(key, None)
