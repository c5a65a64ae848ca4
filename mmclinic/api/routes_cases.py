"""Case submission (JSON or multipart DICOM upload) and job status."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile, status
from sqlalchemy import select

from mmclinic.api.deps import Caller, Tx, api_state, caller
from mmclinic.api.problems import responses
from mmclinic.api.schemas import CaseSubmission, Id, JobOut, SubmitResponse
from mmclinic.errors import ForbiddenError, InputError, NotFoundError
from mmclinic.store import cases as case_store
from mmclinic.store.dicomstore import ingest_files
from mmclinic.store.models import CaseRow, Job

router = APIRouter(prefix="/api/v1", tags=["cases"])
SUBMIT_ROLES = ("integration", "admin")


def _site(tx: Tx, requested: str | None) -> str:
    site = requested or tx.principal.site
    if not tx.principal.can_see_site(site):
        raise ForbiddenError("auth.site_forbidden", "you may submit cases only for your own site")
    return site


def _submit(tx: Tx, inp: case_store.CaseInput, model: str) -> SubmitResponse:
    res = case_store.submit(tx.session, inp, model=model, submitted_by=tx.principal.user_id)
    tx.resource = f"case/{res.case.case_key}"
    return SubmitResponse(
        job_id=res.job.id,
        case_id=res.case.case_key,
        state=res.job.state,
        duplicate=res.duplicate,
        job_url=f"/api/v1/jobs/{res.job.id}",
    )


@router.post(
    "/cases",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmitResponse,
    responses=responses(400, 401, 403, 404, 422),
    summary="Submit a case (notes, tabular values, reference to an ingested study)",
)
def submit_case(body: CaseSubmission, who: Caller = Depends(caller)) -> SubmitResponse:
    """Queue inference for a case. The same inputs again return the existing job (``duplicate: true``)."""
    with who.audited("case.create", "case/new", SUBMIT_ROLES) as tx:
        inp = case_store.CaseInput(
            patient_id=body.patient_id,
            site=_site(tx, body.site),
            study_uid=body.study_instance_uid,
            notes=tuple(case_store.NoteInput(n.text.encode(), n.note_type, n.note_date) for n in body.notes),
            tabular=body.tabular,
        )
        return _submit(tx, inp, who.st.model)


def _parse_tabular(raw: str | None) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InputError("tabular.bad_json", "tabular must be a JSON object") from exc
    if not isinstance(value, dict) or any(isinstance(v, dict | list) for v in value.values()):
        raise InputError("tabular.bad_json", "tabular must be a JSON object of scalar values")
    return value


@router.post(
    "/cases/upload",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmitResponse,
    responses=responses(400, 401, 403, 404, 409, 413, 422),
    summary="Submit a case with its DICOM files (multipart)",
)
def upload_case(
    files: Annotated[list[UploadFile], File(description="DICOM Part 10 files of one study")],
    patient_id: Annotated[str, Form(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")],
    site: Annotated[str | None, Form(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None,
    notes: Annotated[list[str] | None, Form(description="Note texts")] = None,
    tabular: Annotated[str | None, Form(description="One record as a JSON object")] = None,
    who: Caller = Depends(caller),
) -> SubmitResponse:
    """Store the files durably under the data folder, register the study, and queue the case."""
    limit_mb = who.st.settings.api.max_upload_mb
    with who.audited("case.create", "case/new", SUBMIT_ROLES) as tx:
        # Authenticated and authorised before any byte of the upload is looked at.
        the_site = _site(tx, site)
        record = _parse_tabular(tabular)
        blobs: list[bytes] = []
        total = 0
        for f in files:
            parts: list[bytes] = []
            while chunk := f.file.read(1 << 20):
                total += len(chunk)
                if total > limit_mb * 1024 * 1024:
                    raise InputError("input.too_large", f"upload exceeds {limit_mb} MB")
                parts.append(chunk)
            blobs.append(b"".join(parts))
        study = ingest_files(tx.session, who.st.data_dir, the_site, blobs)
        inp = case_store.CaseInput(
            patient_id=patient_id,
            site=the_site,
            study_uid=study.study_uid,
            notes=tuple(case_store.NoteInput(n.encode()) for n in (notes or []) if n),
            tabular=record,
        )
        return _submit(tx, inp, who.st.model)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=responses(401, 404, 422),
    summary="Job status",
)
def get_job(job_id: Id, who: Caller = Depends(caller)) -> JobOut:
    """State, attempts, error reason and (when done) the prediction id of one job."""
    with who.audited("job.read", f"job/{job_id}") as tx:
        row = tx.session.execute(select(Job, CaseRow).join(CaseRow).where(Job.id == job_id)).first()
        if row is None or not tx.principal.can_see_site(row[1].site):
            raise NotFoundError("not_found.job", "no such job")
        job, case = row
        return JobOut(
            id=job.id,
            case_id=case.case_key,
            model=job.model,
            state=job.state,  # type: ignore[arg-type, unused-ignore]
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            error_reason=job.error_reason,
            error_detail=job.error_detail,
            prediction_id=job.prediction_id,
            created_at=job.created_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )


__all__ = ["api_state", "router"]
