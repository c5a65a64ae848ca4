"""Request and response bodies of the HTTP API (pydantic); they are the OpenAPI schema."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
PSEUDO_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
SITE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
CODE_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"
TabularValue = float | int | str | bool | None
MAX_ID = 2_147_483_647  # ids are 32-bit integers on PostgreSQL
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoteIn(_Strict):
    text: str = Field(min_length=1, max_length=200_000)
    note_type: str = Field(default="clinical_note", pattern=CODE_PATTERN)
    note_date: date | None = None


class CaseSubmission(_Strict):
    """A case by reference to an ingested study plus notes and one tabular record."""

    patient_id: str = Field(pattern=PSEUDO_PATTERN, description="Pseudonymous patient id (never a real id).")
    site: str | None = Field(default=None, pattern=SITE_PATTERN, description="Defaults to the caller's site.")
    study_instance_uid: str | None = Field(default=None, max_length=64, pattern=UID_PATTERN)
    notes: list[NoteIn] = Field(default_factory=list, max_length=64)
    tabular: dict[str, TabularValue] | None = Field(default=None, max_length=256)


class SubmitResponse(BaseModel):
    job_id: int
    case_id: str
    state: str
    duplicate: bool
    job_url: str


class JobOut(BaseModel):
    id: int
    case_id: str
    model: str
    state: Literal["queued", "running", "done", "failed"]
    attempts: int
    max_attempts: int
    error_reason: str | None
    error_detail: str | None
    prediction_id: int | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class FindingOut(BaseModel):
    center_mm: list[float]
    diameter_mm: float
    confidence: float = Field(description="Peak lesion-map probability of the finding (detection confidence).")
    malignancy_risk: float = Field(
        description="Calibrated probability of malignancy were this finding the case's only lesion."
    )
    center_voxel: list[int] | None = None
    label: str


class ProvenanceOut(BaseModel):
    weights_sha256: str
    task: str
    task_version: str
    plugin_versions: dict[str, str]
    mmclinic_version: str
    preprocessing_hash: str
    input_fingerprint: str
    input_fingerprints: dict[str, str]
    device: str
    timings_ms: dict[str, float]
    modalities_present: list[str]


class PredictionSummary(BaseModel):
    id: int
    case_id: str
    site: str
    task: str
    malignancy_risk: float = Field(description="Calibrated probability of malignancy.")
    tumor_probability: float
    review_status: Literal["pending", "accepted", "rejected", "amended"]
    findings_count: int
    created_at: datetime


class WorklistPage(BaseModel):
    items: list[PredictionSummary]
    next_cursor: str | None


class PredictionDetail(PredictionSummary):
    findings: list[FindingOut]
    modality_contributions: dict[str, float]
    provenance: ProvenanceOut


class ReviewIn(_Strict):
    verdict: Literal["accept", "reject", "amend"]
    reason_code: str = Field(pattern=CODE_PATTERN)
    comment: str = Field(default="", max_length=10_000)
    amendment: dict[str, Any] | None = Field(default=None, max_length=64)


class ReviewOut(BaseModel):
    id: int
    prediction_id: int
    verdict: Literal["accept", "reject", "amend"]
    reason_code: str
    comment: str
    amendment: dict[str, Any] | None
    reviewer: str
    created_at: datetime


class PluginOut(BaseModel):
    kind: str
    name: str
    version: str
    distribution: str
    status: str
    reason: str


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]


class UserIn(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,128}$")
    role: Literal["clinician", "integration", "admin"]
    site: str = Field(pattern=SITE_PATTERN)


class UserOut(BaseModel):
    id: int
    name: str
    role: str
    site: str
    active: bool
    created_at: datetime


class TokenIn(_Strict):
    label: str = Field(default="", max_length=128)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: int
    user: str
    prefix: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret; shown only in this response.")


class AuditEventOut(BaseModel):
    seq: int
    occurred_at: datetime
    actor: str
    role: str
    site: str
    action: str
    resource: str
    outcome: str
    client: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_after_seq: int | None
