"""Bounded, thread-safe LRU cache of sentence-piece states, shared by the notes encoders of a process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch

_LOCK = threading.Lock()
_CACHES: dict[int, PieceCache] = {}


class PieceCache:
    """Maps (scope, token ids) to a piece's state; evicts the least recently used beyond ``capacity``.

    The scope names the frozen model instance and numeric mode that computed the state, so fp32, int8
    and autocast states never mix. Capacity 0 disables caching.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[Hashable, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, scope: Hashable, key: tuple[int, ...]) -> torch.Tensor | None:
        """The cached state, or None."""
        with self._lock:
            value = self._items.get((scope, key))
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end((scope, key))
            self.hits += 1
            return value

    def put(self, scope: Hashable, key: tuple[int, ...], value: torch.Tensor) -> None:
        """Store a state (a CPU tensor); no-op when the capacity is 0."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[(scope, key)] = value
            self._items.move_to_end((scope, key))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def piece_cache(capacity: int) -> PieceCache:
    """The process-wide cache for this capacity (encoders configured alike share one)."""
    with _LOCK:
        return _CACHES.setdefault(capacity, PieceCache(capacity))
