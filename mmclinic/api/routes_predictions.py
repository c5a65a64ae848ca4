"""Worklist, prediction detail with findings and provenance, and reviews."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status

from mmclinic.api.deps import Caller, caller
from mmclinic.api.problems import responses
from mmclinic.api.schemas import (
    FindingOut,
    Id,
    PredictionDetail,
    PredictionSummary,
    ProvenanceOut,
    ReviewIn,
    ReviewOut,
    WorklistPage,
)
from mmclinic.store import predictions as pred_store
from mmclinic.store.models import PredictionRow, Review

router = APIRouter(prefix="/api/v1", tags=["predictions"])
REVIEW_ROLES = ("clinician", "admin")


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _summary(row: PredictionRow, case_key: str) -> PredictionSummary:
    return PredictionSummary(
        id=row.id,
        case_id=case_key,
        site=row.site,
        task=row.task,
        malignancy_risk=row.malignancy_risk,
        tumor_probability=row.tumor_probability,
        review_status=row.review_status,  # type: ignore[arg-type, unused-ignore]
        findings_count=len(row.findings),
        created_at=row.created_at,
    )


def _review_out(r: Review) -> ReviewOut:
    return ReviewOut(
        id=r.id,
        prediction_id=r.prediction_id,
        verdict=r.verdict,
        reason_code=r.reason_code,  # type: ignore[arg-type, unused-ignore]
        comment=r.comment,
        amendment=r.amendment,
        reviewer=r.reviewer_name,
        created_at=r.created_at,
    )


@router.get(
    "/predictions",
    response_model=WorklistPage,
    responses=responses(400, 401, 422),
    summary="Worklist: filter, sort, cursor pagination",
)
def worklist(
    who: Caller = Depends(caller),
    site: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None,
    review_status: Literal["pending", "accepted", "rejected", "amended"] | None = None,
    min_risk: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    max_risk: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sort: Literal["risk", "-risk", "date", "-date"] = "-risk",
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WorklistPage:
    """Predictions visible to the caller; non-admins only ever see their own site's rows."""
    with who.audited("worklist.read", f"worklist/{site or '*'}") as tx:
        own = tx.site_filter()
        if own is not None and site is not None and site != own:
            return WorklistPage(items=[], next_cursor=None)
        q = pred_store.WorklistQuery(
            site=own or site,
            review_status=review_status,
            min_risk=min_risk,
            max_risk=max_risk,
            since=_utc(since),
            until=_utc(until),
            sort=sort,
            cursor=cursor,
            limit=limit,
        )
        rows, nxt = pred_store.worklist(tx.session, q)
        keys = pred_store.case_keys(tx.session, rows)
        tx.resource = f"worklist/{q.site or '*'}:{len(rows)}"
        return WorklistPage(items=[_summary(r, keys[r.case_id]) for r in rows], next_cursor=nxt)


@router.get(
    "/predictions/{prediction_id}",
    response_model=PredictionDetail,
    responses=responses(401, 404, 422),
    summary="One prediction with findings and provenance",
)
def get_prediction(prediction_id: Id, who: Caller = Depends(caller)) -> PredictionDetail:
    with who.audited("prediction.read", f"prediction/{prediction_id}") as tx:
        row = pred_store.get_visible(tx.session, prediction_id, tx.site_filter())
        s = _summary(row, pred_store.case_key_of(tx.session, row))
        return PredictionDetail(
            **s.model_dump(),
            findings=[FindingOut.model_validate(f) for f in row.findings],
            modality_contributions=row.modality_contributions,
            provenance=ProvenanceOut(
                weights_sha256=row.weights_sha256,
                task=row.task,
                task_version=row.task_version,
                plugin_versions=row.plugin_versions,
                mmclinic_version=row.mmclinic_version,
                preprocessing_hash=row.preprocessing_hash,
                input_fingerprint=row.input_fingerprint,
                input_fingerprints=row.input_fingerprints,
                device=row.device,
                timings_ms=row.timings_ms,
                modalities_present=row.modalities_present,
            ),
        )


@router.post(
    "/predictions/{prediction_id}/reviews",
    status_code=status.HTTP_201_CREATED,
    response_model=ReviewOut,
    responses=responses(400, 401, 403, 404, 422),
    summary="Review a prediction (accept / reject / amend)",
)
def create_review(prediction_id: Id, body: ReviewIn, who: Caller = Depends(caller)) -> ReviewOut:
    with who.audited("review.create", f"prediction/{prediction_id}", REVIEW_ROLES) as tx:
        row = pred_store.get_visible(tx.session, prediction_id, tx.site_filter())
        review = pred_store.add_review(
            tx.session,
            row,
            body.verdict,
            body.reason_code,
            body.comment,
            tx.principal.user_id,
            tx.principal.name,
            body.amendment,
        )
        tx.resource = f"prediction/{prediction_id}/review/{review.id}"
        return _review_out(review)


@router.get(
    "/predictions/{prediction_id}/reviews",
    response_model=list[ReviewOut],
    responses=responses(401, 404, 422),
    summary="Review history of a prediction, oldest first",
)
def list_reviews(prediction_id: Id, who: Caller = Depends(caller)) -> list[ReviewOut]:
    with who.audited("review.read", f"prediction/{prediction_id}/reviews") as tx:
        row = pred_store.get_visible(tx.session, prediction_id, tx.site_filter())
        return [_review_out(r) for r in pred_store.reviews_of(tx.session, row)]
