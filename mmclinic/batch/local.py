"""Local engine: prefetching threads load and validate cases while the main thread runs the model on batches.

Loading (DICOM decode, resampling, note tokenising) and inference overlap: a thread pool prepares cases
ahead of the model, bounded to a window of a few batches so memory stays flat on large cohorts. Threads
rather than processes because the engine's ``prepare`` is thread-compatible, its heavy parts (numpy,
torch, pydicom pixel decoding) release the GIL, and prepared tensors then need no pickling.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from mmclinic.batch.items import Outcome, ScoringEngine, WorkItem, chunks, prepare_item, score_outcomes
from mmclinic.batch.journal import Journal, Key
from mmclinic.batch.progress import Counts
from mmclinic.logs import event

log = logging.getLogger(__name__)


def run_local(
    engine: ScoringEngine,
    items: Sequence[WorkItem],
    journal: Journal,
    counts: Counts,
    *,
    batch_size: int,
    workers: int,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[int, Key]:
    """Score every item not already in ``journal``; commit one transaction per batch. Returns item keys."""
    weights = engine.weights_sha256
    done = frozenset(journal.done_keys())
    keys: dict[int, Key] = {}
    # Prefetch window: the batch being predicted, two more being prepared, plus one item per worker.
    window = 2 * batch_size + max(workers, 1)
    pending: deque[Future[Outcome]] = deque()
    todo = iter(items)

    def fill(pool: ThreadPoolExecutor) -> None:
        while len(pending) < window:
            nxt = next(todo, None)
            if nxt is None:
                return
            pending.append(pool.submit(prepare_item, engine, nxt, weights, done))

    pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="prepare")
    try:
        fill(pool)
        for batch in chunks(items, batch_size):
            outcomes: list[Outcome] = []
            for _ in batch:
                # Futures complete in any order, but are consumed in manifest order: batches stay fixed.
                outcomes.append(pending.popleft().result())
                fill(pool)
            for o in outcomes:
                keys[o.item.index] = o.key
            results, failures = score_outcomes(engine, outcomes)
            new = journal.commit_batch(results, failures)
            counts.add(new, sum(o.skipped for o in outcomes), failures)
            on_batch()
            for f in failures:
                event(log, "batch.case_failed", row=f.row, reason=f.reason, final=f.final)
    finally:
        # On an interrupt, queued loads are dropped instead of finishing a window of work nobody will use.
        pool.shutdown(wait=True, cancel_futures=True)
    return keys
