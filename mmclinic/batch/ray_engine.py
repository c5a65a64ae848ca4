"""Ray Data engine: batches of cases flow through ``map_batches`` into a pool of actors that hold the model.

Each dataset row is one batch of the run (cut on manifest position, like the local engine), so every
case is predicted in the same batch composition as locally and the risks agree bit-for-bit on CPU. The
driver commits each finished batch to the journal as it streams back, so a Ray run resumes like a local
one. Case paths must be readable from every Ray node (a shared filesystem on a cluster). ``ray`` is an
optional extra (``mmclinic[ray]``) and is imported only in this module.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmclinic.batch.items import ScoringEngine, WorkItem, chunks, fingerprint_item, prepare_item, score_outcomes
from mmclinic.batch.journal import Failure, Journal, Key
from mmclinic.batch.progress import Counts
from mmclinic.errors import ConfigError
from mmclinic.logs import event

log = logging.getLogger(__name__)

EngineFactory = Callable[[], ScoringEngine]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the Data library comes with the [data] extra only
    except ImportError as exc:
        raise ConfigError("config.ray_missing", "the Ray engine needs the extra: pip install 'mmclinic[ray]'") from exc
    return ray


def _failure_to_json(f: Failure) -> list[Any]:
    return [f.key.case_id, f.key.input_fingerprint, f.key.weights_sha256, f.row, f.reason, f.detail, f.final]


def _failure_from_json(v: list[Any]) -> Failure:
    return Failure(Key(v[0], v[1], v[2]), int(v[3]), str(v[4]), str(v[5]), bool(v[6]))


class BatchScorer:
    """The Ray actor: builds the engine once, then prepares and predicts whole batches."""

    def __init__(self, factory: EngineFactory, done: list[tuple[str, str, str]]) -> None:
        self.engine = factory()
        self.weights = self.engine.weights_sha256
        self.done = frozenset(Key(*k) for k in done)

    def __call__(self, batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        out: dict[str, list[Any]] = {"chunk": [], "keys": [], "results": [], "failures": [], "skipped": []}
        for chunk, payload in zip(batch["chunk"], batch["payload"], strict=True):
            items: list[WorkItem] = pickle.loads(payload)
            outcomes = [prepare_item(self.engine, it, self.weights, self.done) for it in items]
            results, failures = score_outcomes(self.engine, outcomes)
            out["chunk"].append(int(chunk))
            out["keys"].append(json.dumps([[o.item.index, *_key_list(o.key)] for o in outcomes]))
            out["results"].append(json.dumps([[*_key_list(k), pred] for k, pred in results]))
            out["failures"].append(json.dumps([_failure_to_json(f) for f in failures]))
            out["skipped"].append(sum(o.skipped for o in outcomes))
        return {k: np.asarray(v) for k, v in out.items()}


def _key_list(k: Key) -> list[str]:
    return [k.case_id, k.input_fingerprint, k.weights_sha256]


def run_ray(
    factory: EngineFactory,
    weights: str,
    items: Sequence[WorkItem],
    journal: Journal,
    counts: Counts,
    *,
    batch_size: int,
    workers: int,
    address: str | None = None,
    num_cpus_per_worker: float = 1.0,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[int, Key]:
    """Score the items on Ray (an existing session, ``address``, or a new local instance)."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:  # else: the caller's session (a notebook, a test, a job submitted to a cluster)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return _run(ray, factory, weights, items, journal, counts, batch_size, workers, num_cpus_per_worker, on_batch)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    factory: EngineFactory,
    weights: str,
    items: Sequence[WorkItem],
    journal: Journal,
    counts: Counts,
    batch_size: int,
    workers: int,
    num_cpus_per_worker: float,
    on_batch: Callable[[], None],
) -> dict[int, Key]:
    keys: dict[int, Key] = {}
    done = journal.done_keys()
    rows: list[dict[str, Any]] = []
    bad: list[Failure] = []
    skipped = 0
    for k, batch in enumerate(chunks(items, batch_size)):
        todo = []
        for it in batch:
            if it.case is None or done:
                # A row that never became a case needs no cluster; on a resumed run the driver fingerprints
                # cases itself (hashing, no decoding) so that finished batches are not shipped at all.
                o = fingerprint_item(it, weights)
                keys[it.index] = o.key
                if o.failure is not None:
                    bad.append(o.failure)
                    continue
                if o.key in done:
                    skipped += 1
                    continue
            todo.append(it)
        if todo:
            rows.append({"chunk": k, "payload": pickle.dumps(todo)})
    if bad:
        journal.commit_batch([], bad)
    counts.add(0, skipped, bad)
    on_batch()
    if not rows:
        return keys
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run has its own progress bar
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    scored = ds.map_batches(
        BatchScorer,
        fn_constructor_kwargs={"factory": factory, "done": [_key_list(k) for k in done]},
        batch_size=1,  # one row is already one whole batch of cases
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(rows)))),
        num_cpus=num_cpus_per_worker,
    )
    for row in scored.iter_rows():
        for idx, *key in json.loads(row["keys"]):
            keys[int(idx)] = Key(*key)
        results = [(Key(c, fp, w), pred) for c, fp, w, pred in json.loads(row["results"])]
        failures = [_failure_from_json(v) for v in json.loads(row["failures"])]
        new = journal.commit_batch(results, failures)
        counts.add(new, int(row["skipped"]), failures)
        on_batch()
        for f in failures:
            event(log, "batch.case_failed", row=f.row, reason=f.reason, final=f.final)
    return keys
