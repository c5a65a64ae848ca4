"""Predictions (idempotent save), the site-scoped worklist with cursor pagination, and append-only reviews."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mmclinic.case import Prediction
from mmclinic.errors import InputError, NotFoundError
from mmclinic.store.models import REVIEW_VERDICTS, CaseRow, PredictionRow, Review

Sort = Literal["risk", "-risk", "date", "-date"]
SORTS: tuple[str, ...] = ("risk", "-risk", "date", "-date")
_REASON_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_STATUS_OF_VERDICT = {"accept": "accepted", "reject": "rejected", "amend": "amended"}


def find_existing(session: Session, input_fingerprint: str, weights_sha256: str) -> PredictionRow | None:
    """The prediction already made for these inputs under these weights, if any."""
    return session.scalar(
        select(PredictionRow).where(
            PredictionRow.input_fingerprint == input_fingerprint, PredictionRow.weights_sha256 == weights_sha256
        )
    )


def save_prediction(session: Session, case: CaseRow, pred: Prediction) -> tuple[PredictionRow, bool]:
    """Insert ``pred`` for ``case``; returns ``(row, created)``. The unique key makes a repeat a no-op."""
    existing = find_existing(session, case.input_fingerprint, pred.provenance.weights_sha256)
    if existing is not None:
        return existing, False
    p = pred.provenance
    d = pred.to_dict()
    row = PredictionRow(
        case_id=case.id,
        site=case.site,
        input_fingerprint=case.input_fingerprint,
        task=pred.task,
        tumor_probability=float(pred.tumor_probability),
        malignancy_risk=float(pred.malignancy_risk),
        findings=d["findings"],
        modality_contributions=d["modality_contributions"],
        weights_sha256=p.weights_sha256,
        task_version=p.task_version,
        plugin_versions=dict(p.plugin_versions),
        mmclinic_version=p.mmclinic_version,
        preprocessing_hash=p.preprocessing_hash,
        input_fingerprints=dict(p.input_fingerprints),
        device=p.device,
        timings_ms=dict(p.timings_ms),
        modalities_present=list(p.modalities_present),
        review_status="pending",
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another worker saved the same prediction between our check and insert
        again = find_existing(session, case.input_fingerprint, pred.provenance.weights_sha256)
        if again is None:
            raise
        return again, False
    return row, True


def get_visible(session: Session, prediction_id: int, site: str | None) -> PredictionRow:
    """A prediction visible to a caller limited to ``site`` (``None``: every site); else NotFoundError."""
    # Out-of-range ids cannot exist (32-bit keys on PostgreSQL) and would overflow the driver.
    row = session.get(PredictionRow, prediction_id) if 0 < prediction_id < 2**31 else None
    if row is None or (site is not None and row.site != site):
        raise NotFoundError("not_found.prediction", "no such prediction")
    return row


@dataclass(frozen=True)
class WorklistQuery:
    """Worklist filters; ``site`` is already forced to the caller's site for non-admins."""

    site: str | None = None
    review_status: str | None = None
    min_risk: float | None = None
    max_risk: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    sort: Sort = "-risk"
    cursor: str | None = None
    limit: int = 50


def _encode_cursor(sort: str, row: PredictionRow) -> str:
    key: Any = row.malignancy_risk if sort.endswith("risk") else row.created_at.isoformat()
    raw = json.dumps({"s": sort, "k": key, "i": row.id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        obj = json.loads(raw)
        if not isinstance(obj, dict) or obj.get("s") != sort or not isinstance(obj.get("i"), int):
            raise ValueError("cursor does not match the query")
        key = obj["k"]
        if sort.endswith("risk"):
            if isinstance(key, bool) or not isinstance(key, int | float):
                raise ValueError("bad risk key")
            return float(key), obj["i"]
        return datetime.fromisoformat(str(key)), obj["i"]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise InputError("input.bad_cursor", "the cursor is not valid for this query") from exc


def worklist(session: Session, q: WorklistQuery) -> tuple[list[PredictionRow], str | None]:
    """One page of predictions and the cursor of the next page (``None`` at the end)."""
    if q.sort not in SORTS:
        raise InputError("input.bad_sort", f"sort must be one of {', '.join(SORTS)}")
    col: Any = PredictionRow.malignancy_risk if q.sort.endswith("risk") else PredictionRow.created_at
    desc = q.sort.startswith("-")
    stmt = select(PredictionRow)
    if q.site is not None:
        stmt = stmt.where(PredictionRow.site == q.site)
    if q.review_status is not None:
        stmt = stmt.where(PredictionRow.review_status == q.review_status)
    if q.min_risk is not None:
        stmt = stmt.where(PredictionRow.malignancy_risk >= q.min_risk)
    if q.max_risk is not None:
        stmt = stmt.where(PredictionRow.malignancy_risk <= q.max_risk)
    if q.since is not None:
        stmt = stmt.where(PredictionRow.created_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(PredictionRow.created_at < q.until)
    if q.cursor:
        key, last_id = _decode_cursor(q.cursor, q.sort)
        # Keyset pagination on (key, id): stable under inserts, O(page) per request.
        if desc:
            stmt = stmt.where(or_(col < key, and_(col == key, PredictionRow.id < last_id)))
        else:
            stmt = stmt.where(or_(col > key, and_(col == key, PredictionRow.id > last_id)))
    order = (col.desc(), PredictionRow.id.desc()) if desc else (col.asc(), PredictionRow.id.asc())
    rows = list(session.scalars(stmt.order_by(*order).limit(q.limit + 1)).all())
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return rows, (_encode_cursor(q.sort, rows[-1]) if more and rows else None)


def add_review(
    session: Session,
    prediction: PredictionRow,
    verdict: str,
    reason_code: str,
    comment: str,
    reviewer_id: int | None,
    reviewer_name: str,
    amendment: dict[str, Any] | None = None,
) -> Review:
    """Append a review and move the prediction's review status to match the verdict."""
    if verdict not in REVIEW_VERDICTS:
        raise InputError("review.bad_verdict", f"verdict must be one of {', '.join(REVIEW_VERDICTS)}")
    if not _REASON_RE.match(reason_code):
        raise InputError("review.bad_reason_code", "reason_code must be a lower-case dotted code")
    if verdict != "accept" and not comment.strip():
        raise InputError("review.comment_required", f"a {verdict} verdict needs a comment")
    if verdict == "amend" and not amendment:
        raise InputError("review.amendment_required", "an amend verdict needs the amendment")
    if verdict != "amend" and amendment:
        raise InputError("review.unexpected_amendment", "only an amend verdict carries an amendment")
    review = Review(
        prediction_id=prediction.id,
        verdict=verdict,
        reason_code=reason_code,
        comment=comment,
        amendment=amendment,
        reviewer_id=reviewer_id,
        reviewer_name=reviewer_name,
    )
    session.add(review)
    prediction.review_status = _STATUS_OF_VERDICT[verdict]
    session.flush()
    return review


def reviews_of(session: Session, prediction: PredictionRow) -> list[Review]:
    """Every review of a prediction, oldest first."""
    return list(session.scalars(select(Review).where(Review.prediction_id == prediction.id).order_by(Review.id)))


def case_key_of(session: Session, prediction: PredictionRow) -> str:
    """The public case id of a prediction."""
    key = session.scalar(select(CaseRow.case_key).where(CaseRow.id == prediction.case_id))
    assert key is not None
    return key


def case_keys(session: Session, rows: list[PredictionRow]) -> dict[int, str]:
    """Public case ids of several predictions in one query."""
    ids = {r.case_id for r in rows}
    if not ids:
        return {}
    return {int(i): str(k) for i, k in session.execute(select(CaseRow.id, CaseRow.case_key).where(CaseRow.id.in_(ids)))}
