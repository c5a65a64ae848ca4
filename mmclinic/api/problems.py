"""RFC 9457 problem details: MmclinicError → HTTP status + ``application/problem+json`` with a stable type."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmclinic.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InputError,
    MmclinicError,
    NotFoundError,
    ResourceExhaustedError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:mmclinic:problem:"

# Most specific first; anything else that reaches the edge is a server fault (500).
_STATUS: tuple[tuple[type[MmclinicError], int], ...] = (
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ResourceExhaustedError, 503),
    (InputError, 400),
)
_STATUS_OF_REASON = {"input.too_large": 413}
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    500: "Internal error",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """An error response (RFC 9457). ``reason`` is the stable mmclinic reason code; ``type`` is derived from it."""

    type: str = Field(examples=["urn:mmclinic:problem:not_found.prediction"])
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    reason: str
    errors: list[dict[str, Any]] | None = None


def status_for(exc: MmclinicError) -> int:
    """The HTTP status of a library error."""
    if exc.reason in _STATUS_OF_REASON:
        return _STATUS_OF_REASON[exc.reason]
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(
    status: int,
    reason: str,
    detail: str,
    instance: str = "",
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = Problem(
        type=TYPE_PREFIX + reason,
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        reason=reason,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _problem_schema() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Problem"}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error responses an operation can return."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {
            "description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _problem_schema()}},
        }
    return out


async def mmclinic_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MmclinicError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="mmclinic"'} if status == 401 else None
    detail = exc.detail if status < 500 else "internal error"
    return problem(status, exc.reason, detail, request.url.path, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only locations and messages: echoing the input could copy patient data into logs and clients.
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
    return problem(422, "input.validation", "the request does not match the schema", request.url.path, errors)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    reason = {404: "not_found.route", 405: "input.method_not_allowed"}.get(exc.status_code, "http.error")
    return problem(exc.status_code, reason, str(exc.detail), request.url.path, headers=dict(exc.headers or {}))


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return problem(500, "internal", "internal error", request.url.path)
