"""Work items of a cohort run: manifest rows, their input fingerprints, and the prepare / score steps.

Both engines (local and Ray) use these functions, so a case is prepared, fingerprinted, batched and
turned into a journal entry by exactly the same code whichever engine runs it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mmclinic.batch.journal import Failure, Key
from mmclinic.case import IMAGING, NOTES, TABULAR, Case, NoteRef, Prediction, StudyRef, sha256_bytes, stable_hash
from mmclinic.errors import InputError, MmclinicError
from mmclinic.logs import event

log = logging.getLogger(__name__)


class ScoringEngine(Protocol):
    """The part of ``mmclinic.engine.InferenceEngine`` the batch scorer uses."""

    @property
    def weights_sha256(self) -> str: ...

    def prepare(self, case: Case) -> Any: ...

    def predict_prepared(self, items: list[Any]) -> list[Prediction]: ...


@dataclass(frozen=True)
class WorkItem:
    """One manifest row: its position, and the case built from it or why that failed."""

    index: int  # 0-based position in the manifest; batches are cut on it
    row: int  # 1-based data row number, for messages
    case: Case | None
    error: InputError | None = None

    @property
    def case_id(self) -> str:
        """The case id, or a stand-in for a row whose case could not be built."""
        return self.case.case_id if self.case is not None else f"row-{self.row}"


@dataclass
class Outcome:
    """What preparing one item gave: a prepared case, a failure, or "already done"."""

    item: WorkItem
    key: Key
    prepared: Any = None
    failure: Failure | None = None
    skipped: bool = False


def read_items(manifest: Path, records: Path | None, labels: Sequence[str]) -> list[WorkItem]:
    """Every manifest row as a work item (``labels``: the task's); InputError only for an unusable manifest."""
    from mmclinic.cohort import iter_cases

    items = []
    for i, got in enumerate(iter_cases(manifest, records, labels=labels)):
        if isinstance(got, InputError):
            items.append(WorkItem(i, i + 1, None, got))
        else:
            items.append(WorkItem(i, i + 1, got))
    return items


def _study_digest(ref: StudyRef) -> list[list[str]]:
    """(name, SHA-256) of every file of a study, in a stable order."""
    if ref.folder is not None:
        base = ref.folder
        if not base.is_dir():
            raise InputError("batch.input_missing", "the study folder does not exist")
        files = sorted(p for p in base.rglob("*") if p.is_file())
        return [[p.relative_to(base).as_posix(), _file_sha256(p)] for p in files]
    return [[p.name, _file_sha256(p)] for p in sorted(ref.files)]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise InputError("batch.input_unreadable", f"{path.name}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def _note_digest(note: NoteRef) -> list[str]:
    return [sha256_bytes(note.data), note.note_date.isoformat() if note.note_date else "", note.note_type]


def input_fingerprint(case: Case) -> str:
    """SHA-256 over the raw bytes and values of every input of a case (cheap: no decoding).

    Computed before the expensive ``prepare`` so that a resumed run skips finished cases without
    loading them; any change to a file, note or record value gives a new fingerprint and a re-score.
    """
    doc: dict[str, Any] = {"case_id": case.case_id, "site": case.site}
    for modality, ref in sorted(case.inputs.items()):
        if modality == IMAGING and isinstance(ref, StudyRef):
            doc[modality] = _study_digest(ref)
        elif modality == NOTES and isinstance(ref, list):
            doc[modality] = [_note_digest(n) for n in ref]
        elif modality == TABULAR and isinstance(ref, dict):
            doc[modality] = stable_hash(ref)
        else:  # a third-party modality: its reference's stable JSON form
            doc[modality] = stable_hash(ref)
    return stable_hash(doc)


def fingerprint_item(item: WorkItem, weights: str) -> Outcome:
    """The item's key (no engine work); a failure when the row has no case or its inputs cannot be read."""
    if item.case is None:
        assert item.error is not None
        key = Key(item.case_id, "", weights)
        return Outcome(item, key, failure=Failure(key, item.row, item.error.reason, item.error.detail))
    try:
        return Outcome(item, Key(item.case_id, input_fingerprint(item.case), weights))
    except InputError as exc:
        key = Key(item.case_id, "", weights)
        return Outcome(item, key, failure=Failure(key, item.row, exc.reason, exc.detail))


def prepare_item(engine: ScoringEngine, item: WorkItem, weights: str, done: set[Key] | frozenset[Key]) -> Outcome:
    """Fingerprint one item, skip it when already scored, else run the engine's ``prepare`` on it."""
    out = fingerprint_item(item, weights)
    if out.failure is not None:
        return out
    if out.key in done:
        out.skipped = True
        return out
    assert item.case is not None
    key = out.key
    try:
        out.prepared = engine.prepare(item.case)
    except InputError as exc:
        out.failure = Failure(key, item.row, exc.reason, exc.detail)
    except Exception as exc:  # not the input's fault: reported, and retried by the next run
        reason = exc.reason if isinstance(exc, MmclinicError) else "batch.prepare_error"
        out.failure = Failure(key, item.row, reason, f"{type(exc).__name__}: {exc}", final=False)
    return out


def score_outcomes(
    engine: ScoringEngine, outcomes: Sequence[Outcome]
) -> tuple[list[tuple[Key, dict[str, Any]]], list[Failure]]:
    """Predict the prepared outcomes of one batch as one engine batch; isolate a failing case if needed."""
    ready = [o for o in outcomes if o.prepared is not None]
    failures = [o.failure for o in outcomes if o.failure is not None]
    if not ready:
        return [], failures
    try:
        preds = engine.predict_prepared([o.prepared for o in ready])
        return [(o.key, p.to_dict()) for o, p in zip(ready, preds, strict=True)], failures
    except Exception as exc:
        event(log, "batch.predict_batch_failed", level=logging.WARNING, cases=len(ready), error=type(exc).__name__)
    # One case broke the batch: score the cases one by one so that only that case fails.
    results: list[tuple[Key, dict[str, Any]]] = []
    for o in ready:
        try:
            (p,) = engine.predict_prepared([o.prepared])
            results.append((o.key, p.to_dict()))
        except InputError as exc:
            failures.append(Failure(o.key, o.item.row, exc.reason, exc.detail))
        except Exception as exc:
            reason = exc.reason if isinstance(exc, MmclinicError) else "batch.predict_error"
            failures.append(Failure(o.key, o.item.row, reason, f"{type(exc).__name__}: {exc}", final=False))
    return results, failures


def chunks(items: Sequence[WorkItem], batch_size: int) -> Iterable[list[WorkItem]]:
    """Batches cut on manifest position, so a resumed run batches the remaining cases exactly as a full run.

    That matters for bit-exact results: batched floating-point kernels can round differently when the
    batch composition changes.
    """
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])
