"""Service endpoints: liveness, readiness (database + model), installed plugins."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from mmclinic.api.deps import Caller, api_state, caller
from mmclinic.api.problems import responses
from mmclinic.api.schemas import HealthOut, PluginOut, ReadyOut
from mmclinic.store.db import ping

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness (the process answers)")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"description": "Not ready", "model": ReadyOut}},
    summary="Readiness: database reachable and model available",
)
def readyz(request: Request) -> JSONResponse:
    st = api_state(request)
    checks: dict[str, str] = {}
    try:
        ping(st.engine)
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready; the type says enough
        checks["database"] = f"error: {type(exc).__name__}"
    ok, msg = st.model_check()
    checks["model"] = "ok" if ok else f"error: {msg}"
    ready = all(v == "ok" for v in checks.values())
    body = ReadyOut(status="ready" if ready else "not_ready", checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/api/v1/plugins",
    response_model=list[PluginOut],
    responses=responses(401),
    tags=["service"],
    summary="Installed plugins and whether they validated",
)
def plugins(who: Caller = Depends(caller)) -> list[PluginOut]:
    from mmclinic.registry import get_registry

    with who.audited("plugins.read", "plugins"):
        return [
            PluginOut(
                kind=r.kind,
                name=r.name,
                version=r.version,
                distribution=r.distribution,
                status=r.status,
                reason=r.reason,
            )
            for r in get_registry().records
        ]
