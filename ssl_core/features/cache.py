"""A thread-safe, byte-bounded LRU cache, used for extracted features and for loaded encoders."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used cache bounded by a total size (``size_of(value)``; 1 per entry by default)."""

    def __init__(self, max_size: float, size_of: Callable[[V], float] = lambda _v: 1):
        self.max_size = max_size
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._total = 0.0
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = float(self.size_of(value))
        with self._lock:
            if key in self._items:
                self._total -= self._items.pop(key)[1]
            if size > self.max_size:
                return  # larger than the whole cache: not kept
            self._items[key] = (value, size)
            self._total += size
            while self._total > self.max_size and self._items:
                _, (_, old_size) = self._items.popitem(last=False)
                self._total -= old_size

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._total -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0.0

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_size(self) -> float:
        return self._total
