"""Process-wide torch intra-op thread count, shared safely by code that needs fewer threads for a while."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_active: Counter[int] = Counter()  # requested counts of the blocks running now
_base = 0  # the count before the first of them began


def _apply() -> None:
    # The fewest threads any running block asked for: a block that needs one thread (for
    # bit-identical small products) is never overridden by an overlapping block that asked for more.
    torch.set_num_threads(min(_active) if _active else _base)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with at most ``n`` torch intra-op threads (0: unchanged); overlapping blocks compose.

    ``torch.set_num_threads`` is process-wide, so two users saving and restoring it on their own
    would restore each other's value; here the last block to end restores the original count.
    """
    global _base
    if n <= 0:
        yield
        return
    with _lock:
        if not _active:
            _base = torch.get_num_threads()
        _active[n] += 1
        _apply()
    try:
        yield
    finally:
        with _lock:
            _active[n] -= 1
            if not _active[n]:
                del _active[n]
            _apply()
