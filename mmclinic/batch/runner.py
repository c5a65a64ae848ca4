"""``score_cohort``: score a manifest with the local or the Ray engine, resumably, and write the outputs."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmclinic.batch.items import ScoringEngine, WorkItem, read_items
from mmclinic.batch.journal import Journal, Key, journal_path
from mmclinic.batch.output import (
    FAILURE_COLUMNS,
    RESULT_COLUMNS,
    check_output_path,
    failure_row,
    result_row,
    sidecar,
    write_report,
    write_table,
)
from mmclinic.batch.progress import Counts, ProgressBar
from mmclinic.errors import ConfigError
from mmclinic.logs import event

log = logging.getLogger(__name__)

EngineName = Literal["local", "ray"]


@dataclass
class ScoreOptions:
    """Everything ``mmclinic score`` takes."""

    manifest: Path
    out: Path
    model: str = "tumor-risk"
    device: str = "auto"
    engine: EngineName = "local"
    workers: int = 2
    batch_size: int = 8
    db_url: str | None = None
    ray_address: str | None = None
    records: Path | None = None
    data_dir: Path | None = None  # where the store keeps ingested DICOM files (default: settings.data_dir)
    progress: bool = True
    n_boot: int = 1000


@dataclass
class ScoreSummary:
    """What a run did; ``failed`` counts failures by reason code."""

    total: int
    scored: int
    skipped: int
    failed: dict[str, int]
    retryable: int
    seconds: float
    output: Path
    failures_output: Path | None = None
    report_paths: tuple[Path, ...] = ()
    store: dict[str, Any] = field(default_factory=dict)

    @property
    def cases_per_s(self) -> float:
        """Throughput over the cases scored in this run."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """Human summary, one fact per line."""
        out = [
            f"scored {self.scored}, skipped (already done) {self.skipped}, failed {sum(self.failed.values())} "
            f"of {self.total} cases in {self.seconds:.1f} s ({self.cases_per_s:.2f} cases/s)"
        ]
        out += [f"  failed {n} × {reason}" for reason, n in sorted(self.failed.items())]
        if self.retryable:
            out.append(f"  {self.retryable} failure(s) were not caused by the input and will be retried by a rerun")
        out.append(f"results: {self.output}")
        if self.failures_output is not None:
            out.append(f"failures: {self.failures_output}")
        out += [f"metrics: {p}" for p in self.report_paths]
        if self.store:
            out.append(f"store: {self.store}")
        return out


def load_engine(model: str, device: str, batch_size: int) -> ScoringEngine:
    """The real inference engine (module-level so that Ray can ship it to its actors by reference)."""
    from mmclinic.engine import InferenceEngine

    return InferenceEngine.load(model, device=device, batch_size=batch_size)


@dataclass(frozen=True)
class ModelFacts:
    """What the driver knows of a model without building it (the Ray driver does no inference)."""

    weights_sha256: str
    meta: dict[str, Any]
    labels: tuple[str, ...]  # the task's label names: the manifest columns read and written back
    risk_label: str  # the label the risk head is scored on in the metrics report
    presence_label: str


def _model_facts(model: str) -> ModelFacts:
    """Weights SHA-256, checkpoint meta and the labels of the installed task the checkpoint names."""
    from mmclinic.case import sha256_file
    from mmclinic.engine.checkpoint import read_checkpoint
    from mmclinic.engine.engine import model_task, resolve_model_path
    from mmclinic.registry import get_registry

    registry = get_registry()
    path = resolve_model_path(model, registry)
    meta = read_checkpoint(path)["meta"]
    return _facts(sha256_file(path), meta, model_task(meta, registry).spec())


def _engine_facts(engine: ScoringEngine) -> ModelFacts | None:
    """The facts of an engine already built (its checkpoint is not read again); None if it lacks a task spec."""
    from mmclinic.plugin_api import TaskSpec

    spec = getattr(engine, "spec", None)
    if not isinstance(spec, TaskSpec):
        return None
    return _facts(engine.weights_sha256, dict(getattr(engine, "meta", {}) or {}), spec)


def _facts(weights_sha256: str, meta: dict[str, Any], spec: Any) -> ModelFacts:
    return ModelFacts(weights_sha256, meta, spec.labels, spec.head("risk").label, spec.head("presence").label)


def score_cohort(opts: ScoreOptions, engine_factory: Callable[[], ScoringEngine] | None = None) -> ScoreSummary:
    """Score every case of ``opts.manifest`` not yet scored under these weights; write table, failures, metrics.

    ``engine_factory`` replaces the real engine (tests); it must be picklable for the Ray engine.
    """
    check_output_path(opts.out)
    if opts.batch_size < 1 or opts.workers < 1:
        raise ConfigError("config.bad_batch", "--batch-size and --workers must be at least 1")
    if opts.engine not in ("local", "ray"):
        raise ConfigError("config.bad_engine", f"engine must be local or ray, got {opts.engine!r}")
    factory = engine_factory or functools.partial(load_engine, opts.model, opts.device, opts.batch_size)
    # The local engine is built first and tells its own labels; the Ray driver builds none, so it reads
    # the checkpoint's metadata (the labels decide which manifest columns are read).
    engine = factory() if opts.engine == "local" else None
    facts = (_engine_facts(engine) if engine is not None else None) or _model_facts(opts.model)
    items = read_items(opts.manifest, opts.records, facts.labels)
    t0 = time.perf_counter()
    counts = Counts(total=len(items))
    meta: dict[str, Any] = {}
    with Journal(journal_path(opts.out)) as journal:
        previous = journal.get_meta("batch_size")
        if previous is not None and previous != str(opts.batch_size):
            # Batched kernels may round differently in another batch composition (last bits only).
            event(log, "batch.batch_size_changed", level=logging.WARNING, before=previous, now=opts.batch_size)
        journal.set_meta("batch_size", str(opts.batch_size))
        with ProgressBar(counts, enabled=opts.progress) as bar:
            if engine is not None:
                meta = dict(getattr(engine, "meta", {}) or {})
                from mmclinic.batch.local import run_local

                keys = run_local(
                    engine,
                    items,
                    journal,
                    counts,
                    batch_size=opts.batch_size,
                    workers=opts.workers,
                    on_batch=bar.update,
                )
            else:
                from mmclinic.batch.ray_engine import run_ray

                meta = facts.meta
                weights = facts.weights_sha256 if engine_factory is None else engine_factory().weights_sha256
                keys = run_ray(
                    factory,
                    weights,
                    items,
                    journal,
                    counts,
                    batch_size=opts.batch_size,
                    workers=opts.workers,
                    address=opts.ray_address,
                    on_batch=bar.update,
                )
        summary = _write_outputs(opts, items, keys, journal, counts, facts, meta, time.perf_counter() - t0)
    event(
        log,
        "batch.done",
        total=summary.total,
        scored=summary.scored,
        skipped=summary.skipped,
        failed=sum(summary.failed.values()),
        seconds=round(summary.seconds, 2),
    )
    return summary


def _write_outputs(
    opts: ScoreOptions,
    items: list[WorkItem],
    keys: dict[int, Key],
    journal: Journal,
    counts: Counts,
    facts: ModelFacts,
    meta: dict[str, Any],
    seconds: float,
) -> ScoreSummary:
    """Result and failure tables for exactly this manifest's cases under these weights, in manifest order."""
    rows, fail_rows, preds = [], [], []
    labels: dict[str, dict[str, float]] = {}
    rejected: dict[str, str] = {}
    scored_cases = []
    failed_by_reason: dict[str, int] = {}
    retryable = 0
    for it in items:
        key = keys[it.index]
        pred = journal.result(key)
        if it.case is not None:
            labels[it.case_id] = dict(it.case.labels)
        if pred is not None:
            rows.append(result_row(it.row, key.input_fingerprint, pred, labels.get(it.case_id, {})))
            preds.append(pred)
            if it.case is not None:
                scored_cases.append((it.case, pred))
            continue
        failure = journal.failure(key)
        assert failure is not None, f"case {key.case_id} has neither a result nor a failure"
        fail_rows.append(failure_row(failure))
        rejected[key.case_id] = failure.reason
        failed_by_reason[failure.reason] = failed_by_reason.get(failure.reason, 0) + 1
        retryable += not failure.final
    write_table(opts.out, rows, RESULT_COLUMNS, facts.labels)
    failures_out = sidecar(opts.out, "failures")
    write_table(failures_out, fail_rows, FAILURE_COLUMNS)
    reports: tuple[Path, ...] = ()
    from mmclinic.batch.report import cohort_report

    threshold = float((meta.get("metrics") or {}).get("threshold", 0.5))
    report = cohort_report(
        manifest=opts.manifest,
        model=opts.model,
        preds=preds,
        labels=labels,
        risk_label=facts.risk_label,
        presence_label=facts.presence_label,
        rejected=rejected,
        threshold=threshold,
        n_boot=opts.n_boot,
        voxel_mm=min(((meta.get("spec") or {}).get("imaging") or {}).get("spacing_mm") or [5.0]),
    )
    if report is not None:
        reports = write_report(opts.out, report)
    store: dict[str, Any] = {}
    if opts.db_url:
        from mmclinic.batch.store_sink import write_to_store
        from mmclinic.config import get_settings

        st = write_to_store(opts.db_url, opts.data_dir or get_settings().data_dir, opts.model, scored_cases)
        store = {"created": st.created, "existing": st.existing, "failed": st.failed or {}}
    return ScoreSummary(
        total=len(items),
        scored=counts.scored,
        # Skipped: results committed by an earlier run (earlier final failures are counted as failures).
        skipped=len(rows) - counts.scored,
        failed=failed_by_reason,
        retryable=retryable,
        seconds=seconds,
        output=opts.out,
        failures_output=failures_out,
        report_paths=reports,
        store=store,
    )
