"""A set of the latest N keys added (oldest forgotten first): for facts about ended things
that must outlive them for a while, but not forever (removed incarnations, ended lives)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


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
